//! tarpc 0.38 echo over TCP and Unix sockets (bincode, length-delimited
//! frames, TCP_NODELAY on both ends like the messenger's tcp).

use bytes::Bytes;
use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::cli_bench::{self, Sample, Window};

#[tarpc::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(body: Bytes) -> Bytes;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, body: Bytes) -> Bytes {
        body
    }
}

async fn serve_stream<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    BaseChannel::with_defaults(transport)
        .execute(EchoServer.serve())
        .for_each(|response| async move {
            tokio::spawn(response);
        })
        .await;
}

/// Serves echo on tcp and a Unix socket in `dir`; returns both endpoints
/// (written tcp:// and ipc:// for the harness).
pub async fn bind(dir: &std::path::Path) -> Vec<String> {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let tcp_ep = format!("tcp://{}", tcp.local_addr().expect("addr"));
    let path = dir.join("tarpc.sock");
    let unix = UnixListener::bind(&path).expect("bind unix");
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_stream(s));
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = unix.accept().await {
            tokio::spawn(serve_stream(s));
        }
    });
    vec![tcp_ep, format!("ipc://{}", path.display())]
}

/// Connects a client to `endpoint` (tcp:// or ipc://) allowing `in_flight`
/// requests at once.
pub async fn connect(endpoint: &str, in_flight: usize) -> Result<EchoClient, String> {
    let mut config = client::Config::default();
    config.max_in_flight_requests = in_flight.max(1) + 16;
    config.pending_request_buffer = in_flight.max(100);
    if let Some(addr) = endpoint.strip_prefix("tcp://") {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let t = tarpc::serde_transport::Transport::from((s, Bincode::default()));
        Ok(EchoClient::new(config, t).spawn())
    } else if let Some(path) = endpoint.strip_prefix("ipc://") {
        let s = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
        let t = tarpc::serde_transport::Transport::from((s, Bincode::default()));
        Ok(EchoClient::new(config, t).spawn())
    } else {
        Err(format!("not tcp or ipc: {endpoint}"))
    }
}

/// The closed loop: `in_flight` tasks, each calling `echo` in a loop.
pub async fn closed_loop(
    client: EchoClient,
    size: usize,
    in_flight: usize,
    window: Window,
    progress: impl FnMut(u64),
) -> Sample {
    let body = cli_bench::body(size);
    let one = move || {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let reply = client
                .echo(context::current(), body.clone())
                .await
                .map_err(|e| e.to_string())?;
            if reply.len() == body.len() {
                Ok(())
            } else {
                Err("short reply".to_string())
            }
        }
    };
    cli_bench::closed_loop(in_flight, window, one, progress).await
}
