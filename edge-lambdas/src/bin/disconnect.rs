//! The `$disconnect` route Lambda (`streamer-edge-disconnect`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    streamer_edge::lambda::run(streamer_edge::handler::Route::Disconnect).await
}
