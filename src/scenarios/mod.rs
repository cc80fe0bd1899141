//! Runnable scenarios of the three kinds of users (replication loop,
//! model-server loop, in-process components), shared by `messenger demo`
//! and the examples so both run the same code.
