//! Where images may come from: the public-address filter over a table of IPv4 and IPv6
//! addresses (mapped and embedded forms included), a fetch aimed at this machine refused before
//! any connection, and `file://` giving one identical answer for every refused path without
//! blocking on a FIFO.

use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use ocrvl::server::fetch::is_public;
use ocrvl::server::media::{load_image, MediaPolicy, RemoteImages, LOCAL_FILE_REFUSED};

#[test]
fn address_filter_table() {
    let refused = [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
        "::ffff:0.0.0.0",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "ff0e::1",
        "64:ff9b::7f00:1",
        "100::1",
        "2001:db8::1",
        "2001::1",
        "2002:7f00:1::1",
        "4000::1",
    ];
    let allowed = [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "169.253.0.1",
        "223.255.255.255",
        "::ffff:8.8.8.8",
        "2606:4700:4700::1111",
        "2a00:1450:4001:81b::200e",
    ];
    for a in refused {
        let ip: IpAddr = a.parse().unwrap();
        assert!(!is_public(ip), "{a} must be refused");
    }
    for a in allowed {
        let ip: IpAddr = a.parse().unwrap();
        assert!(is_public(ip), "{a} must be allowed");
    }
}

#[test]
fn fetches_to_this_machine_are_refused_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let any = MediaPolicy {
        remote: RemoteImages::Any,
        ..MediaPolicy::default()
    };
    let listed = MediaPolicy {
        remote: RemoteImages::Domains(vec!["localhost".into(), "127.0.0.1".into()]),
        ..MediaPolicy::default()
    };
    for (policy, url) in [
        (&any, format!("http://127.0.0.1:{port}/a.png")),
        (&any, format!("http://localhost:{port}/a.png")),
        (&any, format!("http://[::ffff:127.0.0.1]:{port}/a.png")),
        (&any, format!("http://0.0.0.0:{port}/a.png")),
        (&listed, format!("http://localhost:{port}/a.png")),
        (&listed, format!("http://127.0.0.1:{port}/a.png")),
    ] {
        let e = load_image(&url, policy, 0).unwrap_err();
        assert_eq!(e.status, 400, "{url}");
        assert!(e.message.contains("not a public address"), "{url}: {}", e.message);
    }
    // Nothing ever connected.
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[test]
fn file_urls_give_one_answer_for_every_refused_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("allowed");
    std::fs::create_dir(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let outside = tmp.path().join("secret.png");
    std::fs::write(&outside, png()).unwrap();
    std::fs::write(root.join("ok.png"), png()).unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link-out.png")).unwrap();
    let fifo = root.join("fifo.png");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let policy = MediaPolicy {
        local_dir: Some(root.clone()),
        ..MediaPolicy::default()
    };
    let ok = load_image(&url(&root.join("ok.png")), &policy, 0).unwrap();
    assert_eq!(ok, png());

    let refused = [
        url(&root.join("missing.png")),
        url(&outside),
        url(&tmp.path().join("missing.png")),
        format!("{}/../secret.png", url(&root)),
        url(&root.join("dir")),
        url(&root.join("link-out.png")),
        url(&fifo),
        "file:///etc/passwd".to_string(),
        "file:///no/such/dir/x.png".to_string(),
    ];
    // Run where a hang (a FIFO opened blocking) fails the test instead of stalling it.
    let (tx, rx) = mpsc::channel();
    let urls = refused.to_vec();
    std::thread::spawn(move || {
        let answers: Vec<String> = urls
            .iter()
            .map(|u| load_image(u, &policy, 0).unwrap_err().message)
            .collect();
        let _ = tx.send(answers);
    });
    let answers = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no file:// read blocks");
    let expected = format!("image 0: {LOCAL_FILE_REFUSED}");
    for (u, a) in refused.iter().zip(&answers) {
        assert_eq!(a, &expected, "{u}");
    }
}
