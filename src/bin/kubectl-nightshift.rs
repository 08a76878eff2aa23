//! `kubectl-nightshift`: on PATH, kubectl runs it as `kubectl nightshift`. See
//! [`nightshift::plugin`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    nightshift::plugin::main().await
}
