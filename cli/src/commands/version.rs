//! `straitctl version`: the client's version, and the server's from `GET /`.
//!
//! In: the connection settings. Out: `Client: ...` and `Server: ...` lines; when the server
//! cannot be asked, the client line still prints, with a warning on stderr.

use serde_json::Value;

use crate::cli::VersionArgs;
use crate::commands::Context;
use crate::output::print;

/// Runs `version`.
pub async fn run(args: &VersionArgs, ctx: &Context) -> anyhow::Result<()> {
    print(&format!("Client: straitctl {}\n", env!("CARGO_PKG_VERSION")))?;
    if args.client {
        return Ok(());
    }
    let answer = match ctx.client() {
        Ok(client) => client.get("/").await.map(|v| (client.server().to_string(), v)).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match answer {
        Ok((server, v)) => print(&format!("{}\n", server_line(&server, &v)))?,
        Err(e) => eprintln!("warning: no server version: {e:#}"),
    }
    Ok(())
}

fn server_line(server: &str, v: &Value) -> String {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    format!("Server: {} {} {} ({server})", field("product"), field("component"), field("version"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_line() {
        let v = serde_json::json!({"product": "Strait", "component": "global", "version": "0.1.0"});
        assert_eq!(super::server_line("http://a:1", &v), "Server: Strait global 0.1.0 (http://a:1)");
    }
}
