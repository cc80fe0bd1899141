//! Why a payload, or the frames of a message, were refused.

/// Why a payload could not be parsed as `{msg_id}-{src_cb}-{dst_cb}-{body}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Zero-length payload.
    #[error("empty payload")]
    Empty,
    /// The payload ended before the named field and its `-` terminator.
    #[error("payload ends inside the {0} field")]
    Truncated(&'static str),
    /// The named field is empty (`--`).
    #[error("the {0} field is empty")]
    EmptyField(&'static str),
    /// The named field holds a byte that is not an ASCII digit.
    #[error("the {0} field holds a byte that is not a decimal digit")]
    NotDigit(&'static str),
    /// The named field is larger than `u64::MAX`.
    #[error("the {0} field does not fit in 64 bits")]
    Overflow(&'static str),
}

/// Why a message's frames could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message did not have the frame count the socket type requires.
    #[error("expected {expected} frames, got {got}")]
    Count {
        /// Frames the protocol expects on this socket.
        expected: &'static str,
        /// Frames that arrived.
        got: usize,
    },
    /// The delimiter frame before the payload was not empty.
    #[error("delimiter frame is not empty ({0} bytes)")]
    Delimiter(usize),
    /// The payload frame could not be parsed.
    #[error("malformed payload: {0}")]
    Payload(#[from] ParseError),
    /// The payload is larger than the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}
