//! A small ingest-server handler: splits each message's payload into words, one output per word
//! (zero outputs for a blank line). Deterministic, as replay in rbml and hml requires.
//!
//! ```sh
//! cargo run --example word_handler -- 127.0.0.1:50061
//! ```

use sidelog::proto::handler_server::{Handler, HandlerServer};
use sidelog::proto::{HandleRequest, HandleResponse, Message};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Words;

#[tonic::async_trait]
impl Handler for Words {
    async fn handle(
        &self,
        request: Request<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let request = request.into_inner();
        let message = request
            .message
            .ok_or_else(|| Status::invalid_argument("HandleRequest without a message"))?;
        let text = std::str::from_utf8(&message.payload)
            .map_err(|_| Status::invalid_argument("payload is not UTF-8"))?;
        let outputs = text
            .split_whitespace()
            .map(|word| Message {
                // sidelog sets the id to "<input id>/<i>" and fills an empty key from the input.
                payload: word.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(HandleResponse { outputs }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50061".into())
        .parse()?;
    eprintln!("word handler listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(HandlerServer::new(Words))
        .serve(addr)
        .await?;
    Ok(())
}
