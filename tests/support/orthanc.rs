//! A throwaway Orthanc (Debian package) as a real PACS peer: its own
//! storage directory, DICOM and HTTP on free loopback ports, no plugins,
//! the modalities it may talk to given at start. Killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::free_port;

/// Debian's orthanc-dicomweb plugin.
pub const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

pub struct Orthanc {
    child: Child,
    _dir: tempfile::TempDir,
    pub dicom_port: u16,
    pub http_port: u16,
    pub aet: String,
}

impl Orthanc {
    /// Starts Orthanc with AE title `aet`, knowing `modalities` as
    /// (name, AE title, port on 127.0.0.1).
    pub fn start(aet: &str, modalities: &[(&str, &str, u16)]) -> Orthanc {
        Orthanc::start_on(aet, free_port(), modalities)
    }

    /// [`Orthanc::start`] with its DICOM port chosen by the caller (who
    /// needed it before Orthanc could start).
    pub fn start_on(aet: &str, dicom_port: u16, modalities: &[(&str, &str, u16)]) -> Orthanc {
        Orthanc::start_with(aet, dicom_port, modalities, json!({}))
    }

    /// [`Orthanc::start_on`] with more configuration (`extra`'s keys
    /// replace the defaults: e.g. `Plugins` and `DicomWeb`).
    pub fn start_with(aet: &str, dicom_port: u16, modalities: &[(&str, &str, u16)], extra: Value) -> Orthanc {
        let dir = tempfile::tempdir().expect("tmp");
        let http_port = free_port();
        let mods: serde_json::Map<String, Value> = modalities
            .iter()
            .map(|(name, ae, port)| (name.to_string(), json!([ae, "127.0.0.1", port])))
            .collect();
        let mut cfg = json!({
            "Name": "test",
            "StorageDirectory": dir.path().join("db"),
            "IndexDirectory": dir.path().join("db"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": false,
            "DicomCheckModalityHost": false,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowFind": true,
            "DicomAlwaysAllowGet": true,
            "DicomAlwaysAllowMove": true,
            "DicomModalities": mods,
            "Plugins": [],
            "StableAge": 1,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let path = dir.path().join("orthanc.json");
        std::fs::write(&path, cfg.to_string()).expect("orthanc config");
        let log = std::fs::File::create(dir.path().join("orthanc.log")).expect("orthanc log");
        let child = Command::new("Orthanc")
            .arg("--verbose")
            .arg(&path)
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Orthanc (apt install orthanc)");
        let o = Orthanc {
            child,
            _dir: dir,
            dicom_port,
            http_port,
            aet: aet.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while o.get("/system").is_err() {
            assert!(Instant::now() < deadline, "Orthanc did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Orthanc's own log (verbose), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("orthanc.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        ureq::get(&self.url(path))
            .call()
            .map_err(|e| e.to_string())?
            .body_mut()
            .read_json()
            .map_err(|e| e.to_string())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        ureq::post(&self.url(path))
            .send_json(body)
            .map_err(|e| e.to_string())?
            .body_mut()
            .read_json()
            .map_err(|e| e.to_string())
    }

    /// Uploads a DICOM file over REST.
    pub fn upload(&self, file: &Path) {
        let bytes = std::fs::read(file).expect("read");
        ureq::post(&self.url("/instances"))
            .header("content-type", "application/dicom")
            .send(&bytes[..])
            .unwrap_or_else(|e| panic!("upload {}: {e}", file.display()));
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
