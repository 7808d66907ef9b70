//! Firecracker's documented start-up, as a user would drive it: `PUT /boot-source`,
//! `PUT /machine-config`, `PUT /actions {"action_type":"InstanceStart"}` on its API socket
//! (HTTP/1.1 over a Unix stream, through hyper), or the same settings as the
//! `--no-api --config-file` JSON document.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use thiserror::Error;
use tokio::net::UnixStream;

use crate::engines::{GuestImage, VmShape};

#[derive(Debug, Error)]
pub enum FcError {
    #[error(
        "Firecracker API socket {path} did not accept a connection within {waited_ms} ms: {source}"
    )]
    Connect {
        path: String,
        waited_ms: u128,
        source: std::io::Error,
    },
    #[error("Firecracker API {method} {path}: {source}")]
    Http {
        method: &'static str,
        path: &'static str,
        source: hyper::Error,
    },
    #[error("Firecracker API {method} {path}: building the request: {source}")]
    Request {
        method: &'static str,
        path: &'static str,
        source: hyper::http::Error,
    },
    #[error("Firecracker API {method} {path} answered HTTP {status}: {body}")]
    Refused {
        method: &'static str,
        path: &'static str,
        status: u16,
        body: String,
    },
    #[error("Firecracker API: could not start an async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "Firecracker exited before its API socket {path} accepted a connection (waited {waited_ms} ms)"
    )]
    ExitedBeforeConnect { path: String, waited_ms: u128 },
}

/// Body of `PUT /boot-source` (and the config file's `boot-source`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    pub boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Body of `PUT /machine-config` (and the config file's `machine-config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
}

/// Body of `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Action {
    pub action_type: &'static str,
}

/// Everything one Firecracker boot is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FcVm {
    pub boot: BootSource,
    pub machine: MachineConfig,
}

impl FcVm {
    pub fn new(guest: &GuestImage, shape: VmShape) -> FcVm {
        FcVm {
            boot: BootSource {
                kernel_image_path: guest.kernel.display().to_string(),
                boot_args: guest.cmdline.clone(),
                initrd_path: guest.initrd.as_ref().map(|p| p.display().to_string()),
            },
            machine: MachineConfig {
                vcpu_count: shape.vcpus,
                mem_size_mib: shape.mem_mib,
            },
        }
    }

    /// The requests, in the order Firecracker's getting-started guide sends them.
    pub fn requests(&self) -> [(&'static str, Vec<u8>); 3] {
        let json = |v: serde_json::Value| v.to_string().into_bytes();
        [
            ("/boot-source", json(serde_json::json!(self.boot))),
            ("/machine-config", json(serde_json::json!(self.machine))),
            (
                "/actions",
                json(serde_json::json!(Action {
                    action_type: "InstanceStart"
                })),
            ),
        ]
    }
}

/// The `--config-file` document: the same two settings; no drives (the guest needs none).
pub fn config_file_json(vm: &FcVm) -> String {
    serde_json::json!({
        "boot-source": vm.boot,
        "machine-config": vm.machine,
        "drives": [],
    })
    .to_string()
}

/// Waits for the API socket to accept, then sends the three requests on one connection.
/// Blocking: it runs on the harness's driver thread with its own small runtime. `exited`
/// is set once Firecracker has been reaped: the wait for the socket then ends at once.
pub fn drive(
    socket: &Path,
    vm: &FcVm,
    timeout: Duration,
    exited: &AtomicBool,
) -> Result<(), FcError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FcError::Runtime)?;
    rt.block_on(drive_async(socket, vm, timeout, exited))
}

async fn drive_async(
    socket: &Path,
    vm: &FcVm,
    timeout: Duration,
    exited: &AtomicBool,
) -> Result<(), FcError> {
    let stream = connect_when_ready(socket, timeout, exited).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| FcError::Http {
            method: "PUT",
            path: "/boot-source",
            source,
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for (path, body) in vm.requests() {
        let req = Request::builder()
            .method("PUT")
            .uri(path)
            .header("host", "localhost")
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| FcError::Request {
                method: "PUT",
                path,
                source,
            })?;
        let http = |source| FcError::Http {
            method: "PUT",
            path,
            source,
        };
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if !(200..300).contains(&status) {
            return Err(FcError::Refused {
                method: "PUT",
                path,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    }
    Ok(())
}

/// Firecracker creates its socket a little after exec: retry briefly until it accepts, or
/// until Firecracker is gone (a stale socket file refuses, a missing one is never made).
async fn connect_when_ready(
    socket: &Path,
    timeout: Duration,
    exited: &AtomicBool,
) -> Result<UnixStream, FcError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(_) if exited.load(Ordering::Acquire) => {
                return Err(FcError::ExitedBeforeConnect {
                    path: socket.display().to_string(),
                    waited_ms: start.elapsed().as_millis(),
                })
            }
            Err(source) if start.elapsed() >= timeout => {
                return Err(FcError::Connect {
                    path: socket.display().to_string(),
                    waited_ms: start.elapsed().as_millis(),
                    source,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_micros(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a fake API server: these check the requests the harness sends and the order
    //! it sends them in, not how Firecracker itself behaves or how fast it boots.
    use std::sync::{Arc, Mutex};

    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};
    use tokio::net::UnixListener;

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

    /// Serves one connection, recording each request; answers 204 as Firecracker does, or
    /// 400 with a fault message for `refuse_path`.
    fn fake_server(
        socket: &Path,
        refuse_path: Option<&'static str>,
    ) -> (Seen, std::thread::JoinHandle<()>) {
        let seen: Seen = Arc::default();
        let seen2 = seen.clone();
        let socket = socket.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            rt.block_on(async move {
                let listener = UnixListener::bind(&socket).expect("bind fake API socket");
                ready_tx.send(()).expect("test waits for the socket");
                let (stream, _) = listener.accept().await.expect("accept");
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen2.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        seen.lock().expect("no panics while held").push((
                            method,
                            path.clone(),
                            json,
                        ));
                        let (status, text) = if Some(path.as_str()) == refuse_path {
                            (StatusCode::BAD_REQUEST, r#"{"fault_message":"nope"}"#)
                        } else {
                            (StatusCode::NO_CONTENT, "")
                        };
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = status;
                        Ok::<_, hyper::Error>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        });
        ready_rx.recv().expect("fake server bound its socket");
        (seen, handle)
    }

    fn vm(initrd: Option<&str>) -> FcVm {
        FcVm {
            boot: BootSource {
                kernel_image_path: "/img/vmlinux".into(),
                boot_args: "console=ttyS0 reboot=k".into(),
                initrd_path: initrd.map(str::to_string),
            },
            machine: MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
            },
        }
    }

    #[test]
    fn sends_boot_source_machine_config_then_instance_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let (seen, server) = fake_server(&sock, None);
        drive(
            &sock,
            &vm(Some("/img/initrd")),
            Duration::from_secs(5),
            &AtomicBool::new(false),
        )
        .expect("drive");
        server.join().expect("server thread");
        let seen = seen.lock().expect("no panics while held");
        let paths: Vec<_> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        assert_eq!(
            paths,
            ["PUT /boot-source", "PUT /machine-config", "PUT /actions"]
        );
        assert_eq!(
            seen[0].2,
            serde_json::json!({"kernel_image_path": "/img/vmlinux",
                "boot_args": "console=ttyS0 reboot=k", "initrd_path": "/img/initrd"})
        );
        assert_eq!(
            seen[1].2,
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256})
        );
        assert_eq!(
            seen[2].2,
            serde_json::json!({"action_type": "InstanceStart"})
        );
    }

    #[test]
    fn a_refused_request_stops_the_flow_and_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let (seen, server) = fake_server(&sock, Some("/machine-config"));
        let err = drive(
            &sock,
            &vm(None),
            Duration::from_secs(5),
            &AtomicBool::new(false),
        )
        .expect_err("400 is refused");
        server.join().expect("server thread");
        let text = err.to_string();
        assert!(
            text.contains("/machine-config") && text.contains("400"),
            "{text}"
        );
        assert!(text.contains("nope"), "the fault message is kept: {text}");
        let seen = seen.lock().expect("no panics while held");
        assert_eq!(seen.len(), 2, "InstanceStart is not sent after a refusal");
        assert!(
            seen[0].2.get("initrd_path").is_none(),
            "no initrd means no initrd_path key: {:?}",
            seen[0].2
        );
    }

    #[test]
    fn a_socket_that_never_appears_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = drive(
            &dir.path().join("missing.sock"),
            &vm(None),
            Duration::from_millis(50),
            &AtomicBool::new(false),
        )
        .expect_err("no server");
        assert!(matches!(err, FcError::Connect { .. }), "{err}");
    }

    #[test]
    fn an_exited_firecracker_ends_the_wait_for_its_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let err = drive(
            &dir.path().join("missing.sock"),
            &vm(None),
            Duration::from_secs(20),
            &AtomicBool::new(true),
        )
        .expect_err("no server");
        assert!(matches!(err, FcError::ExitedBeforeConnect { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn config_file_carries_the_same_settings() {
        let v: serde_json::Value =
            serde_json::from_str(&config_file_json(&vm(None))).expect("JSON");
        assert_eq!(v["boot-source"]["boot_args"], "console=ttyS0 reboot=k");
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["drives"], serde_json::json!([]));
    }
}
