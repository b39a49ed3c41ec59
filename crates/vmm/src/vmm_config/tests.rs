use super::*;

fn drive(id: &str, root: bool) -> BlockDeviceConfig {
    BlockDeviceConfig {
        drive_id: id.into(),
        path_on_host: format!("/tmp/{id}.img"),
        is_root_device: root,
        ..Default::default()
    }
}

#[test]
fn drives_keep_one_root_and_replace_by_id() {
    let mut r = VmResources::default();
    r.put_drive(drive("data", false)).expect("data");
    r.put_drive(drive("rootfs", true)).expect("root");
    assert_eq!(r.drives[0].drive_id, "rootfs", "the root device goes first");
    assert!(matches!(
        r.put_drive(drive("other", true)),
        Err(ConfigError::Conflict(_))
    ));
    let mut ro = drive("data", false);
    ro.is_read_only = true;
    r.put_drive(ro).expect("replace");
    assert_eq!(r.drives.len(), 2);
    assert!(r.drives[1].is_read_only);
}

#[test]
fn one_image_cannot_back_two_drives() {
    let mut r = VmResources::default();
    r.put_drive(drive("a", false)).expect("a");
    let mut twice = drive("b", false);
    twice.path_on_host = "/tmp/a.img".into();
    match r.put_drive(twice) {
        Err(ConfigError::Conflict(m)) => assert!(m.contains("already drive a"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The same path through another spelling of an existing file is the same image.
    let dir = std::env::temp_dir().join(format!("kvmkit-twice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("x.img"), b"").expect("image");
    let mut x = drive("x", false);
    x.path_on_host = dir.join("x.img").display().to_string();
    r.put_drive(x).expect("x");
    let mut y = drive("y", false);
    y.path_on_host = dir.join(".").join("x.img").display().to_string();
    assert!(matches!(r.put_drive(y), Err(ConfigError::Conflict(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsupported_drive_fields_are_refused() {
    let mut d = drive("x", false);
    d.io_engine = IoEngine::Async;
    assert!(d.validate().is_err());
    let mut d = drive("x", false);
    d.socket = Some("/s".into());
    assert!(d.validate().is_err());
    assert!(drive("bad id", false).validate().is_err());
    assert!(drive("", false).validate().is_err());
}

#[test]
fn machine_config_ranges_and_patch() {
    let mut r = VmResources::default();
    assert_eq!(r.machine_config.vcpu_count, 1);
    assert_eq!(r.machine_config.mem_size_mib, DEFAULT_MEM_SIZE_MIB);
    let patch = MachineConfigUpdate {
        vcpu_count: Some(2),
        ..Default::default()
    };
    r.update_machine_config(&patch).expect("patch");
    assert_eq!(r.machine_config.vcpu_count, 2);
    let zero = MachineConfigUpdate {
        vcpu_count: Some(0),
        ..Default::default()
    };
    assert!(r.update_machine_config(&zero).is_err());
    assert_eq!(r.machine_config.vcpu_count, 2, "a refused patch changes nothing");
    let mut big = r.machine_config.clone();
    big.vcpu_count = MAX_VCPUS + 1;
    assert!(big.validate().is_err());
}

#[test]
fn nics_need_unique_taps_and_macs() {
    let nic = |id: &str, tap: &str, mac: Option<&str>| NetworkInterfaceConfig {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: mac.map(String::from),
        ..Default::default()
    };
    let mut r = VmResources::default();
    r.put_network_interface(nic("eth0", "tap0", Some("52:54:00:00:00:01")))
        .expect("eth0");
    assert!(r.put_network_interface(nic("eth1", "tap0", None)).is_err());
    assert!(r
        .put_network_interface(nic("eth1", "tap1", Some("52:54:00:00:00:01")))
        .is_err());
    assert!(r
        .put_network_interface(nic("eth1", "tap1", Some("01:00:00:00:00:01")))
        .is_err());
    r.put_network_interface(nic("eth1", "tap1", None)).expect("eth1");
    assert_ne!(r.network_interfaces[1].mac(), [0; 6]);
    assert_eq!(r.network_interfaces[1].mac(), nic("eth1", "x", None).mac(), "stable");
}

#[test]
fn config_file_sections_parse_and_unknown_keys_fail() {
    let text = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": false}],
        "network-interfaces": [],
        "entropy": {}
    }"#;
    let r = VmResources::from_config_json(text).expect("parse");
    assert_eq!(r.machine_config.vcpu_count, 2);
    assert_eq!(r.drives.len(), 1);
    assert!(r.entropy.is_some());
    assert!(VmResources::from_config_json(r#"{"boot-source": {"kernel_image_path": "/k", "x": 1}}"#).is_err());
    assert!(VmResources::from_config_json(r#"{"bogus": {}}"#).is_err());
    let e = VmResources::from_config_json(r#"{"balloon": {"amount_mib": 1, "deflate_on_oom": true}}"#)
        .expect_err("balloon");
    assert!(e.contains("balloon"), "{e}");
    assert!(VmResources::from_config_json("{").is_err());
    // Round trip: what GET /vm/config shows can be fed back as a config file.
    let back = serde_json::to_string(&r).expect("serialize");
    assert_eq!(VmResources::from_config_json(&back).expect("reparse"), r);
}

#[test]
fn boot_needs_a_kernel() {
    let mut r = VmResources::default();
    assert!(r.check_bootable().is_err());
    r.set_boot_source(BootSourceConfig {
        kernel_image_path: "/k".into(),
        ..Default::default()
    })
    .expect("boot source");
    assert!(r.check_bootable().is_ok());
    assert!(r
        .set_boot_source(BootSourceConfig {
            kernel_image_path: "/k".into(),
            boot_args: Some("x".repeat(5000)),
            ..Default::default()
        })
        .is_err());
}

#[test]
fn vsock_config_in_firecracker_shape() {
    let text = r#"{"vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/v.sock"}}"#;
    let r = VmResources::from_config_json(text).expect("parse");
    let v = r.vsock.as_ref().expect("vsock");
    assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/v.sock")));
    let back: VmResources = serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("de");
    assert_eq!(back, r);
    let e = VmResources::from_config_json(r#"{"vsock": {"guest_cid": 2, "uds_path": "/v"}}"#).expect_err("cid");
    assert!(e.contains("guest_cid"), "{e}");
    let long = "x".repeat(200);
    let e = VmResources::from_config_json(&format!(r#"{{"vsock": {{"guest_cid": 3, "uds_path": "{long}"}}}}"#))
        .expect_err("path");
    assert!(e.contains("uds_path"), "{e}");
    assert!(VmResources::from_config_json(r#"{"vsock": {"guest_cid": 3}}"#).is_err());
    assert!(VmResources::from_config_json(r#"{"vsock": {"guest_cid": 3, "uds_path": "/v", "x": 1}}"#).is_err());
    let mut r = VmResources::default();
    r.set_vsock(VsockDeviceConfig {
        vsock_id: None,
        guest_cid: 4,
        uds_path: "/v".into(),
    })
    .expect("set");
    assert_eq!(r.virtio_device_count(), 1);
}
