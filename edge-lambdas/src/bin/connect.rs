//! The `$connect` route Lambda (`streamer-edge-connect`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    streamer_edge::lambda::run(streamer_edge::handler::Route::Connect).await
}
