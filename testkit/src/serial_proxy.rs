//! A proxy in front of moto that forwards one HTTP request at a time.
//!
//! moto checks a DynamoDB condition and applies the write in two steps without a lock, so two
//! requests it serves at the same moment can both pass their condition (seen here: 47
//! conditional increments "won", 46 applied). DynamoDB makes a conditional write atomic; to test
//! orch's side of it — racing clients, the conflict mapping, no loser taken for a winner —
//! tests that race writers send them through this proxy, in whatever order the clients send
//! them.
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP proxy that forwards one request at a time. Each client connection carries one
/// request: the answer goes back with `Connection: close`.
pub struct SerialProxy {
    pub endpoint: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SerialProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl SerialProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> SerialProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    let _ = Self::forward(client, &upstream, &gate).await;
                });
            }
        });
        SerialProxy { endpoint, accept }
    }

    async fn forward(
        client: TcpStream,
        upstream: &str,
        gate: &tokio::sync::Mutex<()>,
    ) -> std::io::Result<()> {
        let mut client = BufReader::new(client);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if client.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if !lower.starts_with("connection:") {
                head.push_str(&line);
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await?;
        let answer = {
            let _one_at_a_time = gate.lock().await;
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(head.as_bytes()).await?;
            server.write_all(&body).await?;
            let mut answer = Vec::new();
            server.read_to_end(&mut answer).await?;
            answer
        };
        client.get_mut().write_all(&answer).await?;
        client.get_mut().shutdown().await
    }
}
