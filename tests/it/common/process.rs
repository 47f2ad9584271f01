//! The real `keygate` binary as a child process, for tests that need a
//! process boundary: SIGTERM handling, two replicas, log capture, a file
//! size limit standing in for a full disk.

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
    pub forward_auth_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    /// Threads copying piped output into `log`; they end when the child does.
    copiers: Vec<std::thread::JoinHandle<()>>,
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
        Self::start(database_url, env, false).await
    }

    /// As [`KeygateProcess::spawn`], with the output written to `log` by
    /// this process through a pipe: a file size limit on the child
    /// ([`KeygateProcess::limit_file_size`]) then cannot cut its logs.
    pub async fn spawn_with_piped_logs(database_url: &str, env: &[(&str, &str)]) -> KeygateProcess {
        Self::start(database_url, env, true).await
    }

    /// Starts `keygate serve` expecting it to exit before it serves, and
    /// returns its logs (with the exit status).
    pub async fn refused(database_url: &str, env: &[(&str, &str)]) -> String {
        match Self::try_start(database_url, env, false).await {
            Ok(process) => panic!(
                "keygate served where it should have refused:\n{}",
                process.logs()
            ),
            Err(logs) => logs,
        }
    }

    /// Another test can take a port between `free_addr` and the child's
    /// bind; such a start is retried with new ports, any other early exit
    /// fails the test.
    async fn start(database_url: &str, env: &[(&str, &str)], piped: bool) -> KeygateProcess {
        const ATTEMPTS: usize = 3;
        for attempt in 1.. {
            match Self::try_start(database_url, env, piped).await {
                Ok(process) => return process,
                Err(logs) if attempt < ATTEMPTS && logs.contains("Address already in use") => {}
                Err(logs) => panic!("keygate exited early:\n{logs}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts the child and waits until it serves; `Err` holds its logs
    /// when it exited first.
    async fn try_start(
        database_url: &str,
        env: &[(&str, &str)],
        piped: bool,
    ) -> Result<KeygateProcess, String> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("keygate.log");
        let (authz_addr, admin_addr, metrics_addr) = (free_addr(), free_addr(), free_addr());
        let (forward_auth_addr, http_addr) = (free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYGATE_DATABASE_URL", database_url)
            .env("KEYGATE_AUTHZ_ADDR", authz_addr.to_string())
            .env("KEYGATE_ADMIN_ADDR", admin_addr.to_string())
            .env("KEYGATE_METRICS_ADDR", metrics_addr.to_string())
            .env("KEYGATE_FORWARD_AUTH_ADDR", forward_auth_addr.to_string())
            .env("KEYGATE_HTTP_ADDR", http_addr.to_string())
            .env("KEYGATE_LOG_FORMAT", "json")
            .env("KEYGATE_PRUNE_ENABLED", "false")
            // Not about the miss bound: a loaded machine must not fail reads.
            .env("KEYGATE_CHECK_TIMEOUT", "5s")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        let file = std::fs::File::create(&log).unwrap();
        if piped {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            command
                .stdout(file.try_clone().unwrap())
                .stderr(file.try_clone().unwrap());
        }
        let mut child = command.spawn().expect("spawn keygate");
        let mut copiers = Vec::new();
        if piped {
            let streams: [Box<dyn std::io::Read + Send>; 2] = [
                Box::new(child.stdout.take().unwrap()),
                Box::new(child.stderr.take().unwrap()),
            ];
            for mut stream in streams {
                // Line by line, so the two streams interleave whole lines.
                let mut out = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                copiers.push(std::thread::spawn(move || {
                    use std::io::{BufRead, Write};
                    for line in std::io::BufReader::new(&mut stream).lines() {
                        let Ok(line) = line else { return };
                        let _ = writeln!(out, "{line}");
                    }
                }));
            }
        }
        let mut process = KeygateProcess {
            authz_addr,
            admin_addr,
            metrics_addr,
            forward_auth_addr,
            http_addr,
            log,
            child,
            copiers,
            _dir: dir,
        };
        process.wait_until_serving().await?;
        Ok(process)
    }

    async fn wait_until_serving(&mut self) -> Result<(), String> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for copier in self.copiers.drain(..) {
                    let _ = copier.join();
                }
                return Err(format!("exit {status}:\n{}", self.logs()));
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
                    return Ok(());
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

    /// Sets the child's file size limit (`RLIMIT_FSIZE`): every write to a
    /// regular file at or past `bytes` then fails with EFBIG, as writes do
    /// on a full disk. `None` lifts the limit.
    pub fn limit_file_size(&self, bytes: Option<u64>) {
        use rustix::process::{prlimit, Pid, Resource, Rlimit};
        let limit = Rlimit {
            current: bytes,
            maximum: None,
        };
        prlimit(Some(Pid::from_child(&self.child)), Resource::Fsize, limit)
            .expect("set the child's file size limit");
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
                for copier in std::mem::take(&mut self.copiers) {
                    let _ = copier.join();
                }
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
