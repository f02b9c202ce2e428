//! `selfcloud-example-notes --selfcloud http://127.0.0.1:8420 --client-id <id>`: serves Notes on
//! its own loopback port (the client id comes from registering it: see the README's tour).

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The selfcloud server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8420")]
    selfcloud: String,
    /// The client id selfcloud gave Notes when it was registered.
    #[arg(long)]
    client_id: String,
    /// Where Notes listens (its registered redirect URI is `http://<this>/callback`).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = selfcloud_sdk::AppConfig {
        base_url: args.selfcloud.parse().map_err(std::io::Error::other)?,
        client_id: args.client_id,
        redirect_uri: format!("http://{}/callback", args.listen),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("Notes on http://{}", listener.local_addr()?);
    axum::serve(listener, selfcloud_example_notes::router(config)).await
}
