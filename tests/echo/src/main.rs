//! `shunt-echo [ADDR] [NAME]`: the echo server as a process (default `0.0.0.0:$PORT` or
//! `:8080`, name `$POD_NAME` or the hostname).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let addr = args.next().unwrap_or_else(|| format!("0.0.0.0:{port}"));
    let name = args
        .next()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim()
                .to_owned()
        });
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("shunt-echo: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("shunt-echo {name} listening on {addr}");
    shunt_echo::serve(listener, name, Default::default()).await;
    ExitCode::SUCCESS
}
