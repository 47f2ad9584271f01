//! The real `keygate` binary as a child process, for tests that need a
//! process boundary: SIGTERM handling, two replicas, log capture.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

pub struct KeygateProcess {
    pub authz_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A loopback port free right now (the child binds it a moment later).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl KeygateProcess {
    /// Starts `keygate serve` with `env` on top of test defaults and waits
    /// until the admin listener reports SERVING.
    pub async fn spawn(database_url: &str, env: &[(&str, &str)]) -> KeygateProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("keygate.log");
        let (authz_addr, admin_addr, metrics_addr) = (free_addr(), free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYGATE_DATABASE_URL", database_url)
            .env("KEYGATE_AUTHZ_ADDR", authz_addr.to_string())
            .env("KEYGATE_ADMIN_ADDR", admin_addr.to_string())
            .env("KEYGATE_METRICS_ADDR", metrics_addr.to_string())
            .env("KEYGATE_LOG_FORMAT", "json")
            .env("KEYGATE_PRUNE_ENABLED", "false")
            // Not about the miss bound: a loaded machine must not fail reads.
            .env("KEYGATE_CHECK_TIMEOUT", "5s")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
        let child = command.spawn().expect("spawn keygate");
        let mut process = KeygateProcess {
            authz_addr,
            admin_addr,
            metrics_addr,
            log,
            child,
            _dir: dir,
        };
        process.wait_until_serving().await;
        process
    }

    async fn wait_until_serving(&mut self) {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("keygate exited early with {status}:\n{}", self.logs());
            }
            let url = format!("http://{}", self.admin_addr);
            if let Ok(channel) = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
            {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if reply.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keygate did not become ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the process now, from `/proc` (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.logs());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keygate did not stop after SIGTERM:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for KeygateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
