//! A real nginx for the HTTP tests, and a private certificate authority
//! for its https side (and for fastdl-server's HTTP face).
//!
//! nginx runs in the foreground as a child of the test (one process, no
//! privilege switch), on free ports of 127.0.0.1, from a configuration
//! written into a temp folder. It serves one folder at `/`, the same
//! folder without ranges at `/norange/`, and redirects `/moved/NAME` to
//! `/NAME`. Its access log holds one line per request: status, body
//! bytes sent, and the `Range` asked for.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority made for one test, and a server certificate
/// it signed for 127.0.0.1 and localhost.
pub struct Pki {
    /// The CA's certificate: what a client trusts (`--cacert`).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    /// The server certificate's private key, for nginx.
    pub key: PathBuf,
}

impl Pki {
    /// Makes the CA and the server certificate in `dir`.
    pub fn make(dir: &Path) -> Pki {
        fs::create_dir_all(dir).expect("pki folder");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fastdl test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&pki.ca, ca.pem()).expect("write CA");
        fs::write(&pki.cert, cert.pem()).expect("write cert");
        fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }
}

/// A free port on 127.0.0.1 (free when asked: good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `https://127.0.0.1:PORT`, with a certificate of [`Nginx::pki`].
    pub https: String,
    /// The private CA and certificate nginx serves https with.
    pub pki: Pki,
    /// One line per request: `STATUS BYTES "RANGE" REQUEST`.
    pub access_log: PathBuf,
}

impl Nginx {
    /// Starts nginx serving `root`, its files kept in `dir`. Panics with
    /// what to install when nginx is missing.
    pub fn start(root: &Path, dir: &Path) -> Nginx {
        fs::create_dir_all(dir).expect("nginx folder");
        let pki = Pki::make(&dir.join("pki"));
        let (http_port, https_port) = (free_port(), free_port());
        let root = fs::canonicalize(root).expect("root");
        let root = root.display();
        let access_log = dir.join("access.log");
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  log_format fastdl '$connection $status $body_bytes_sent \"$http_range\" $request';\n\
             access_log {log} fastdl;\n  sendfile on;\n  keepalive_requests 100000;\n\
             client_body_temp_path {dir}/t1; proxy_temp_path {dir}/t2; fastcgi_temp_path {dir}/t3;\n\
             uwsgi_temp_path {dir}/t4; scgi_temp_path {dir}/t5;\n\
             server {{\n    listen 127.0.0.1:{http_port};\n    listen 127.0.0.1:{https_port} ssl;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n    root {root};\n\
             location /norange/ {{ alias {root}/; max_ranges 0; }}\n\
             location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}\n\
             location /tohttp/ {{ rewrite ^/tohttp/(.*)$ http://127.0.0.1:{http_port}/$1 redirect; }}\n  }}\n}}\n",
            dir = dir.display(),
            log = access_log.display(),
            cert = pki.cert.display(),
            key = pki.key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nginx ({e}); install it: apt-get install nginx-light")
            });
        let nginx = Nginx {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            https: format!("https://127.0.0.1:{https_port}"),
            pki,
            access_log,
        };
        let up = wait_for_port(http_port, Duration::from_secs(10))
            && wait_for_port(https_port, Duration::from_secs(10));
        assert!(
            up,
            "nginx did not start: {}",
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        nginx
    }

    /// Body bytes sent per request so far, with each request's line.
    pub fn requests(&self) -> Vec<(u16, u64, String)> {
        self.log_lines()
            .into_iter()
            .map(|(_, status, bytes, rest)| (status, bytes, rest))
            .collect()
    }

    /// How many different connections the requests so far came on.
    pub fn connections(&self) -> usize {
        let ids: std::collections::HashSet<u64> =
            self.log_lines().into_iter().map(|(id, ..)| id).collect();
        ids.len()
    }

    /// `(connection, status, bytes, "range" request)` per access-log line.
    fn log_lines(&self) -> Vec<(u64, u16, u64, String)> {
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.splitn(4, ' ');
                let connection = words.next()?.parse().ok()?;
                let status = words.next()?.parse().ok()?;
                let bytes = words.next()?.parse().ok()?;
                Some((connection, status, bytes, words.next()?.to_owned()))
            })
            .collect()
    }
}

/// nginx on the PATH, or where Debian puts it.
fn nginx_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let path = Path::new(dir).join("nginx");
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("nginx")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
