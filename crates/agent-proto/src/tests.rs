use super::*;

fn frame(kind: Kind, payload: &[u8]) -> Frame {
    Frame {
        kind,
        payload: payload.to_vec(),
    }
}

fn header(kind: u8, len: u32) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn frames_round_trip_and_need_whole_payloads() {
    let mut buf = Vec::new();
    encode_frame(Kind::Stdout, b"hello", &mut buf).unwrap();
    encode_frame(Kind::Exit, &Exit::Code(3).encode(), &mut buf).unwrap();
    let (f, n) = decode_frame(&buf).unwrap().unwrap();
    assert_eq!((f, n), (frame(Kind::Stdout, b"hello"), 10));
    let (f, _) = decode_frame(&buf[n..]).unwrap().unwrap();
    assert_eq!(Exit::decode(&f.payload).unwrap(), Exit::Code(3));
    for cut in 0..10 {
        assert!(decode_frame(&buf[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    let mut r = &buf[..];
    assert_eq!(read_frame(&mut r).unwrap(), Some(frame(Kind::Stdout, b"hello")));
    assert_eq!(read_frame(&mut r).unwrap().map(|f| f.kind), Some(Kind::Exit));
    assert!(read_frame(&mut r).unwrap().is_none(), "clean end");
    let mut short = &buf[..7];
    assert!(matches!(read_frame(&mut short), Err(ProtoError::Truncated)));
    let mut short = &buf[..3];
    assert!(matches!(read_frame(&mut short), Err(ProtoError::Truncated)));
}

#[test]
fn hostile_headers_fail_before_any_payload() {
    // An absurd length fails from the header alone: nothing is allocated or awaited.
    let h = header(b'o', u32::MAX);
    assert!(matches!(
        decode_frame(&h),
        Err(ProtoError::TooLong { kind: Kind::Stdout, .. })
    ));
    assert!(matches!(read_frame(&mut &h[..]), Err(ProtoError::TooLong { .. })));
    assert!(matches!(
        decode_frame(&header(b'R', 2)),
        Err(ProtoError::TooLong { .. })
    ));
    assert!(matches!(
        decode_frame(&header(b'x', 6)),
        Err(ProtoError::TooLong { .. })
    ));
    assert!(matches!(
        decode_frame(&header(b'Z', 0)),
        Err(ProtoError::UnknownKind(b'Z'))
    ));
    // Exactly the limit is fine.
    let mut ok = header(b'I', MAX_PAYLOAD as u32);
    ok.resize(HEADER_LEN + MAX_PAYLOAD, 7);
    assert_eq!(decode_frame(&ok).unwrap().unwrap().1, HEADER_LEN + MAX_PAYLOAD);
    assert!(encode_frame(Kind::Run, &[0, 0], &mut Vec::new()).is_err());
}

#[test]
fn requests_round_trip() {
    let req = Request {
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo 'a b'".to_vec(), Vec::new()],
        env: vec![(b"A".to_vec(), b"x=y".to_vec()), (b"EMPTY".to_vec(), Vec::new())],
        cwd: Some(b"/tmp".to_vec()),
        flags: FLAG_STDIN | FLAG_POWEROFF,
    };
    let bytes = req.encode().unwrap();
    let mut b = RequestBuilder::default();
    let mut r = &bytes[..];
    let mut got = None;
    while let Some(f) = read_frame(&mut r).unwrap() {
        assert!(got.is_none(), "frames after Run");
        got = b.push(f).unwrap();
    }
    assert_eq!(got, Some(req));
    // The builder starts over after Run.
    assert_eq!(
        b.push(frame(Kind::Arg, b"true")).unwrap(),
        None,
        "a second request on the same builder"
    );
    assert_eq!(b.push(frame(Kind::Run, &[0])).unwrap(), Some(Request::new(["true"])));
}

#[test]
fn bad_requests_are_refused() {
    let refuse = |frames: &[Frame]| -> ProtoError {
        let mut b = RequestBuilder::default();
        for f in frames {
            if let Err(e) = b.push(f.clone()) {
                return e;
            }
        }
        panic!("accepted {frames:?}")
    };
    let arg = frame(Kind::Arg, b"ls");
    assert!(matches!(refuse(&[frame(Kind::Run, &[0])]), ProtoError::EmptyArgv));
    assert!(matches!(
        refuse(&[frame(Kind::Arg, b""), frame(Kind::Run, &[0])]),
        ProtoError::EmptyArgv
    ));
    assert!(matches!(
        refuse(&[arg.clone(), frame(Kind::Run, &[])]),
        ProtoError::BadFlags
    ));
    assert!(matches!(
        refuse(&[arg.clone(), frame(Kind::Run, &[4])]),
        ProtoError::BadFlags
    ));
    assert!(matches!(
        refuse(&[frame(Kind::Arg, b"a\0b")]),
        ProtoError::Nul(Kind::Arg)
    ));
    assert!(matches!(refuse(&[frame(Kind::Env, b"NOEQ")]), ProtoError::BadEnv));
    assert!(matches!(refuse(&[frame(Kind::Env, b"=v")]), ProtoError::BadEnv));
    assert!(matches!(
        refuse(&[frame(Kind::Cwd, b"/"), frame(Kind::Cwd, b"/")]),
        ProtoError::TwoCwds
    ));
    assert!(matches!(
        refuse(&[frame(Kind::Stdout, b"x")]),
        ProtoError::Unexpected(Kind::Stdout)
    ));
    assert!(matches!(
        refuse(&[frame(Kind::Stdin, b"")]),
        ProtoError::Unexpected(Kind::Stdin)
    ));
    let many: Vec<Frame> = (0..=MAX_ITEMS).map(|_| arg.clone()).collect();
    assert!(matches!(refuse(&many), ProtoError::TooManyItems));
    let big = frame(Kind::Arg, &vec![b'a'; MAX_REQUEST_BYTES / 2 + 1]);
    assert!(matches!(refuse(&[big.clone(), big]), ProtoError::RequestTooBig));
    assert!(Request::new([""]).encode().is_err(), "encode checks like the agent");
}

#[test]
fn exits_encode_and_map_to_shell_status() {
    for e in [Exit::Code(0), Exit::Code(7), Exit::Signal(9), Exit::Code(u32::MAX)] {
        assert_eq!(Exit::decode(&e.encode()).unwrap(), e);
    }
    assert!(Exit::decode(&[2, 0, 0, 0, 0]).is_err());
    assert!(Exit::decode(&[0, 0, 0, 0]).is_err());
    assert_eq!(Exit::Code(7).shell_status(), 7);
    assert_eq!(Exit::Code(256 + 3).shell_status(), 3);
    assert_eq!(Exit::Signal(9).shell_status(), 137);
    assert_eq!(Exit::Signal(200).shell_status(), 255);
}
