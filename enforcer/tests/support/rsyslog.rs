//! A real rsyslogd for the syslog sink tests: in the foreground, with a configuration and a work
//! directory of its own, listening on 127.0.0.1 (plain TCP, or TLS through the gtls driver), and
//! writing what it receives from APP-NAME `enforcer` to a file in RFC 5424 form. The guard kills
//! it and removes the directory when dropped, a panicking test included.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const STARTUP: Duration = Duration::from_secs(15);

/// A port on 127.0.0.1 that nothing listens on (right now).
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A CA and a server certificate (`localhost`, `127.0.0.1`) it signed, as PEM files in `dir`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "enforcer test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&files.ca, ca_cert.pem()).expect("write ca.pem");
        fs::write(&files.cert, server_cert.pem()).expect("write cert.pem");
        fs::write(&files.key, server_key.serialize_pem()).expect("write key.pem");
        files
    }
}

/// The running rsyslogd; killed on drop.
pub struct Rsyslog {
    child: Child,
    output: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn rsyslogd() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("rsyslogd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "rsyslogd is missing: run `cargo xtask setup`, which installs the Debian packages \
                 rsyslog and rsyslog-gnutls"
            )
        })
}

impl Rsyslog {
    /// Starts rsyslogd on `address`, with TLS when `tls` is given (the files must outlive it),
    /// and waits until it accepts connections.
    pub fn start(address: SocketAddr, tls: Option<&TlsFiles>) -> Self {
        let binary = rsyslogd();
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        fs::create_dir(&work).expect("work dir");
        let output = dir.path().join("received.log");
        let log = dir.path().join("rsyslogd.log");
        let (tls_globals, driver) = match tls {
            Some(files) => (
                format!(
                    " DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" \
                     DefaultNetstreamDriverKeyFile=\"{}\"",
                    files.ca.display(),
                    files.cert.display(),
                    files.key.display()
                ),
                " StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\"",
            ),
            None => (String::new(), ""),
        };
        let config = format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\"{tls_globals})\n\
             module(load=\"imtcp\"{driver})\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             if $app-name == \"enforcer\" then {{\n\
             \x20 action(type=\"omfile\" file=\"{output}\" template=\"RSYSLOG_SyslogProtocol23Format\")\n\
             }}\n",
            work = work.display(),
            port = address.port(),
            output = output.display(),
        );
        let config_path = dir.path().join("rsyslog.conf");
        fs::write(&config_path, config).expect("write rsyslog.conf");
        let log_file = fs::File::create(&log).expect("rsyslogd.log");
        let child = Command::new(&binary)
            .arg("-n")
            .arg("-f")
            .arg(&config_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
        let mut server = Self {
            child,
            output,
            log,
            _dir: dir,
        };
        server.wait_until_listening(address);
        server
    }

    fn wait_until_listening(&mut self, address: SocketAddr) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "rsyslogd exited ({status}) before listening (TLS needs the package \
                     rsyslog-gnutls: `cargo xtask setup`):\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < STARTUP,
                "rsyslogd does not listen on {address}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// rsyslogd's own output, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The lines rsyslogd has written so far.
    pub fn received(&self) -> Vec<String> {
        fs::read_to_string(&self.output)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Waits until rsyslogd has written `count` lines, and returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.received();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "rsyslogd wrote {} of {count} messages: {lines:#?}\n{}",
                lines.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
