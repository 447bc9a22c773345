//! A small next tier: a gRPC sink that appends each message it receives to a file as a line
//! `<sidelog-seq>\t<id>\t<payload>`, and fsyncs before it answers OK, so that its ack means
//! what sidelog takes it to mean: the batch is durable here.
//!
//! ```sh
//! cargo run --example append_sink -- 127.0.0.1:50062 received.tsv
//! ```

use std::io::Write;
use std::sync::Mutex;

use sidelog::proto::sink_server::{Sink, SinkServer};
use sidelog::proto::{DeliverRequest, DeliverResponse};
use tonic::{Request, Response, Status};

struct AppendSink {
    file: Mutex<std::fs::File>,
}

#[tonic::async_trait]
impl Sink for AppendSink {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let mut lines = Vec::new();
        for m in request.into_inner().messages {
            let seq = m.headers.get("sidelog-seq").map_or("-", String::as_str);
            writeln!(
                lines,
                "{seq}\t{}\t{}",
                m.id,
                String::from_utf8_lossy(&m.payload)
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        }
        let mut file = self.file.lock().map_err(|_| Status::internal("poisoned"))?;
        file.write_all(&lines)
            .and_then(|()| file.sync_data())
            .map_err(|e| Status::unavailable(format!("cannot write: {e}")))?;
        Ok(Response::new(DeliverResponse {}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:50062".into())
        .parse()?;
    let path = args.next().unwrap_or_else(|| "received.tsv".into());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    eprintln!("append sink listening on {addr}, writing {path}");
    tonic::transport::Server::builder()
        .add_service(SinkServer::new(AppendSink {
            file: Mutex::new(file),
        }))
        .serve(addr)
        .await?;
    Ok(())
}
