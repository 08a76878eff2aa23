//! `kubectl-nightshift`: on PATH, kubectl runs it as `kubectl nightshift`. See
//! [`nightshift_plugin`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    nightshift_plugin::main().await
}
