//! The OpenApp sandbox and the Buildium emulator served over real HTTP in this process.

use std::net::SocketAddr;

use anyhow::Context as _;
use lease_sync_sandbox::Sandbox;
use lease_sync_sandbox::buildium::BuildiumSandbox;
use tokio::sync::oneshot;

/// A [`Sandbox`] served on a free loopback port by a task of the current Tokio runtime, until
/// this is dropped. The sandbox handle stays with the caller, who inspects and steers it.
#[derive(Debug)]
pub struct SandboxServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl SandboxServer {
    /// Serves `sandbox` (a clone of the handle: they share their state) on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(sandbox: &Sandbox) -> Self {
        Self::try_start(sandbox)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn try_start(sandbox: &Sandbox) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the sandbox OpenApp")?;
        let addr = listener
            .local_addr()
            .context("the sandbox listener has no address")?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sandbox.clone().serve(listener, async move {
            // A send or the sender's drop both mean "stop".
            let _ = stopped.await;
        }));
        Ok(Self { addr, _stop: stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/api/v1`, lease-sync's `openapp.base_url` for it.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }
}

/// A [`BuildiumSandbox`] served on a free loopback port by a task of the current Tokio
/// runtime, until this is dropped. The emulator handle stays with the caller, who changes
/// leases, injects faults and reads what was asked through it.
#[derive(Debug)]
pub struct BuildiumServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl BuildiumServer {
    /// Serves `sandbox` (a clone of the handle: they share their state) on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(sandbox: &BuildiumSandbox) -> Self {
        Self::try_start(sandbox)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn try_start(sandbox: &BuildiumSandbox) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the Buildium emulator")?;
        let addr = listener
            .local_addr()
            .context("the Buildium emulator's listener has no address")?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sandbox.clone().serve(listener, async move {
            // A send or the sender's drop both mean "stop".
            let _ = stopped.await;
        }));
        Ok(Self { addr, _stop: stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the Buildium client's base URL for it (the API is under
    /// `/v1`, as at Buildium).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lease_sync_sandbox::SandboxOptions;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn serves_the_callers_sandbox_until_dropped() {
        let sandbox = Sandbox::new(SandboxOptions::default());
        let server = SandboxServer::start(&sandbox).await;
        let addr = server.addr();
        assert!(addr.ip().is_loopback());
        assert_eq!(server.base_url(), format!("http://{addr}/api/v1"));
        // State set through the caller's handle is what the server answers.
        sandbox.add_member("org", "int-1", "user-1", "resident");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        stream
            .write_all(
                b"GET /_sandbox/state HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("user-1"), "{reply}");

        drop(server);
        crate::wait_until(
            "the sandbox to stop listening",
            Duration::from_secs(5),
            || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }

    #[tokio::test]
    async fn serves_the_callers_buildium_emulator_until_dropped() {
        use lease_sync_sandbox::buildium::{BuildiumOptions, NewLease};

        let sandbox = BuildiumSandbox::new(BuildiumOptions::default());
        let server = BuildiumServer::start(&sandbox).await;
        let addr = server.addr();
        assert_eq!(server.base_url(), format!("http://{addr}"));
        let from = time::macros::date!(2024 - 01 - 01);
        let id = sandbox
            .create_lease(&NewLease::new(17, 1, from, None))
            .expect("lease");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = format!(
            "GET /v1/leases/{id} HTTP/1.1\r\nHost: buildium\r\nx-buildium-client-id: a\r\nx-buildium-client-secret: b\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("\"PropertyId\":17"), "{reply}");

        drop(server);
        crate::wait_until(
            "the Buildium emulator to stop listening",
            Duration::from_secs(5),
            || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }
}
