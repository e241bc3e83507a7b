//! The `$default` route Lambda (`streamer-edge-default`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    streamer_edge::lambda::run(streamer_edge::handler::Route::Default).await
}
