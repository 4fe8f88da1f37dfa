//! Codec behaviour beyond the spec vectors: caps, streaming, extremes.

use ncx_proto::{
    decode, encode_to_vec, DecodeError, ErrorCode, FrameDecoder, Message, Name, Text,
    MAX_FRAME_LEN, MAX_NAME_LEN, MAX_TEXT_LEN,
};

fn all_kinds() -> Vec<Message> {
    let long = Name::new("x".repeat(MAX_NAME_LEN)).unwrap();
    let text = Text::new("é".repeat(MAX_TEXT_LEN));
    vec![
        Message::Hello {
            version: u16::MAX,
            identity: long.clone(),
            instance: None,
            proof: [0; 32],
        },
        Message::Hello {
            version: 3,
            identity: long.clone(),
            instance: Some(long.clone()),
            proof: [0xff; 32],
        },
        Message::Welcome { version: 0 },
        Message::Register {
            service: long.clone(),
            remote_port: 0,
            access: ncx_proto::AccessRules {
                allow: vec!["ffff::/16".parse().unwrap(); ncx_proto::MAX_RULES],
                deny: vec!["ffff::/16".parse().unwrap(); ncx_proto::MAX_RULES],
            },
            group: Some(long.clone()),
        },
        Message::Register {
            service: long.clone(),
            remote_port: 1,
            access: ncx_proto::AccessRules::default(),
            group: None,
        },
        Message::RegisterUdp {
            service: long.clone(),
            remote_port: 65535,
            access: ncx_proto::AccessRules {
                allow: vec!["10.0.0.0/8".parse().unwrap(); ncx_proto::MAX_RULES],
                deny: vec![],
            },
        },
        Message::RegisterPrivate {
            service: long.clone(),
            visitors: vec![long.clone(); ncx_proto::MAX_VISITORS],
            group: Some(long.clone()),
        },
        Message::RegisterPrivate {
            service: long.clone(),
            visitors: vec![],
            group: None,
        },
        Message::ServiceHealth {
            service: long.clone(),
            unhealthy: Some(text.clone()),
        },
        Message::ServiceHealth {
            service: long.clone(),
            unhealthy: None,
        },
        Message::Visit {
            owner: long.clone(),
            service: long.clone(),
        },
        Message::VisitUdp {
            owner: long.clone(),
            service: long.clone(),
        },
        Message::RegisterPrivateUdp {
            service: long.clone(),
            visitors: vec![long.clone(); ncx_proto::MAX_VISITORS],
        },
        Message::Registered {
            service: long.clone(),
            remote_port: 65535,
        },
        Message::ServiceRefused {
            service: long.clone(),
            code: ErrorCode::Other(60000),
            message: text.clone(),
        },
        Message::Error {
            code: ErrorCode::Internal,
            message: text.clone(),
        },
        Message::GoAway {
            code: ErrorCode::SessionReplaced,
            message: Text::new("x"),
        },
        Message::Ping(u64::MAX),
        Message::Pong(0),
        Message::VisitorHeader {
            service: long,
            visitor: "[ffff::ffff]:65535".parse().unwrap(),
            public: "[ffff::fffe]:65535".parse().unwrap(),
        },
        Message::VisitorStatus {
            refusal: Some((ErrorCode::LocalTimeout, text)),
        },
        Message::VisitorStatus { refusal: None },
    ]
}

#[test]
fn largest_messages_fit_within_the_cap() {
    for m in all_kinds() {
        let b = encode_to_vec(&m);
        // The largest, a Register with two full access lists, has a 2374-byte body.
        assert!(b.len() - 2 <= MAX_FRAME_LEN, "{m:?} is {} bytes", b.len());
        assert_eq!(decode(&b).unwrap(), Some((m, b.len())));
    }
}

#[test]
fn text_is_cut_at_a_char_boundary() {
    let t = Text::new("é".repeat(MAX_TEXT_LEN));
    assert!(t.as_str().len() <= MAX_TEXT_LEN);
    assert_eq!(t.as_str().len(), MAX_TEXT_LEN); // 2-byte chars, even cap
    let t = Text::new(format!("a{}", "é".repeat(MAX_TEXT_LEN)));
    assert_eq!(t.as_str().len(), MAX_TEXT_LEN - 1);
}

#[test]
fn one_byte_over_the_cap_is_rejected_without_the_body() {
    let len = u16::try_from(MAX_FRAME_LEN + 1).unwrap();
    assert_eq!(
        decode(&len.to_be_bytes()),
        Err(DecodeError::FrameTooLong(MAX_FRAME_LEN + 1))
    );
    // Exactly the cap is allowed to wait for its body.
    let len = u16::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes();
    assert_eq!(decode(&[len[0], len[1], 0x06]), Ok(None));
    assert_eq!(
        decode(&u16::MAX.to_be_bytes()),
        Err(DecodeError::FrameTooLong(65535))
    );
}

#[test]
fn oversized_text_length_is_rejected() {
    // Error frame whose text claims 1025 bytes.
    let mut b = vec![0, 0, 0x06, 0, 1];
    b.extend_from_slice(&u16::try_from(MAX_TEXT_LEN + 1).unwrap().to_be_bytes());
    b.extend(std::iter::repeat_n(b'a', MAX_TEXT_LEN + 1));
    let len = u16::try_from(b.len() - 2).unwrap().to_be_bytes();
    b[..2].copy_from_slice(&len);
    assert_eq!(decode(&b), Err(DecodeError::TextTooLong(MAX_TEXT_LEN + 1)));
}

#[test]
fn oversized_name_is_rejected() {
    let mut b = vec![0, 0, 0x03, 65];
    b.extend(std::iter::repeat_n(b'a', 65));
    b.extend_from_slice(&[0, 1, 0, 0]);
    let len = u16::try_from(b.len() - 2).unwrap().to_be_bytes();
    b[..2].copy_from_slice(&len);
    assert_eq!(
        decode(&b),
        Err(DecodeError::BadName(ncx_proto::NameError::TooLong(65)))
    );
}

#[test]
fn truncated_body_and_bad_fields_are_invalid() {
    // Welcome with a 1-byte version.
    assert_eq!(
        decode(&[0, 2, 0x02, 0]),
        Err(DecodeError::Truncated("version"))
    );
    // VisitorHeader with family 5.
    assert_eq!(
        decode(&[0, 5, 0x10, 1, b'a', 5, 0]),
        Err(DecodeError::BadAddressFamily(5))
    );
    // Error with code 0.
    assert_eq!(
        decode(&[0, 5, 0x06, 0, 0, 0, 0]),
        Err(DecodeError::ZeroErrorCode)
    );
    // Connected status with text.
    assert_eq!(
        decode(&[0, 6, 0x11, 0, 0, 0, 1, b'x']),
        Err(DecodeError::ConnectedWithText)
    );
    // Non-UTF-8 text.
    assert_eq!(
        decode(&[0, 6, 0x06, 0, 1, 0, 1, 0xff]),
        Err(DecodeError::BadUtf8("message"))
    );
}

#[test]
fn every_error_code_round_trips() {
    for n in 0..=u16::MAX {
        assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
    }
}

#[test]
fn decoder_reassembles_a_stream_split_anywhere() {
    let msgs = all_kinds();
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend(encode_to_vec(m));
    }
    for chunk in [1, 2, 3, 7, 64, 1000] {
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            d.push(piece);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert!(d.buffered() <= 2 + MAX_FRAME_LEN + chunk);
        }
        assert_eq!(got, msgs, "chunk size {chunk}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn wanted_never_reads_past_the_frame() {
    let frame = encode_to_vec(&Message::Ping(1));
    let mut d = FrameDecoder::new();
    let mut fed = 0;
    while d.next_message().unwrap().is_none() {
        let want = d.wanted();
        assert!(
            fed + want <= frame.len(),
            "asked for bytes beyond the frame"
        );
        d.push(&frame[fed..fed + want]);
        fed += want;
    }
    assert_eq!(fed, frame.len());
}

#[test]
fn names_are_validated() {
    assert!(Name::new("ok.name_1-2").is_ok());
    assert!(Name::new("").is_err());
    assert!(Name::new("a b").is_err());
    assert!(Name::new("ümlaut").is_err());
    assert!(Name::new("x".repeat(65)).is_err());
}

#[test]
fn ipv6_flow_label_and_scope_id_are_not_carried() {
    // Found by the round-trip fuzz target: the wire carries only address and port.
    let with_scope = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        22,
        7,
        3,
    ));
    let msg = Message::VisitorHeader {
        service: Name::new("ssh").unwrap(),
        visitor: with_scope,
        public: "[::1]:22".parse().unwrap(),
    };
    let (back, _) = decode(&encode_to_vec(&msg)).unwrap().unwrap();
    let Message::VisitorHeader { visitor, .. } = back else {
        panic!("decoded another message");
    };
    assert_eq!(visitor.ip(), with_scope.ip());
    assert_eq!(visitor.port(), 22);
    match visitor {
        std::net::SocketAddr::V6(v6) => {
            assert_eq!(v6.flowinfo(), 0);
            assert_eq!(v6.scope_id(), 0);
        }
        _ => panic!("an IPv6 address decodes as IPv6"),
    }
}

#[test]
fn access_rules_match_blocks_and_mapped_addresses() {
    use ncx_proto::{AccessRules, Cidr};
    let c: Cidr = "203.0.113.0/24".parse().unwrap();
    assert!(c.contains("203.0.113.9".parse().unwrap()));
    assert!(
        c.contains("::ffff:203.0.113.9".parse().unwrap()),
        "IPv4-mapped IPv6 matches"
    );
    assert!(!c.contains("203.0.114.1".parse().unwrap()));
    assert!(!c.contains("2001:db8::1".parse().unwrap()));
    assert_eq!(
        "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!("2001:db8::1".parse::<Cidr>().unwrap().prefix(), 128);
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("nonsense".parse::<Cidr>().is_err());
    let rules = AccessRules {
        allow: vec!["203.0.113.0/24".parse().unwrap()],
        deny: vec!["203.0.113.66/32".parse().unwrap()],
    };
    assert!(rules.permits("203.0.113.1".parse().unwrap()));
    assert!(!rules.permits("203.0.113.66".parse().unwrap()), "deny wins");
    assert!(
        !rules.permits("198.51.100.1".parse().unwrap()),
        "not in allow"
    );
    assert!(AccessRules::default().permits("198.51.100.1".parse().unwrap()));
}

#[test]
fn visitor_lists_are_capped() {
    // 32 names decode; the count byte 33 is rejected before any name is read.
    let full = Message::RegisterPrivate {
        service: Name::new("rdp").unwrap(),
        visitors: vec![Name::new("v").unwrap(); ncx_proto::MAX_VISITORS],
        group: None,
    };
    let b = encode_to_vec(&full);
    assert_eq!(decode(&b).unwrap(), Some((full, b.len())));
    let mut b = vec![0, 0, 0x0a, 1, b'a', 33];
    let len = u16::try_from(b.len() - 2).unwrap().to_be_bytes();
    b[..2].copy_from_slice(&len);
    assert_eq!(decode(&b), Err(DecodeError::TooManyVisitors(33)));
    // A longer list built by hand is cut to the cap when encoded.
    let over = Message::RegisterPrivate {
        service: Name::new("rdp").unwrap(),
        visitors: vec![Name::new("v").unwrap(); ncx_proto::MAX_VISITORS + 1],
        group: None,
    };
    let Some((Message::RegisterPrivate { visitors, .. }, _)) =
        decode(&encode_to_vec(&over)).unwrap()
    else {
        panic!("a RegisterPrivate decodes as one")
    };
    assert_eq!(visitors.len(), ncx_proto::MAX_VISITORS);
}

#[test]
fn too_many_rules_are_rejected() {
    let mut b = vec![0, 0, 0x03, 1, b'a', 0, 1, 65];
    let len = u16::try_from(b.len() - 2).unwrap().to_be_bytes();
    b[..2].copy_from_slice(&len);
    assert_eq!(decode(&b), Err(DecodeError::TooManyRules(65)));
}

/// Text from a peer is shown escaped, so it can neither forge a log line nor drive a terminal; the
/// bytes themselves are kept as received.
#[test]
fn text_is_displayed_with_control_characters_escaped() {
    let raw = "nope\nINFO ncx::audit: forged\r\t\u{1b}[31mred\u{202e}txt\u{2028}ok";
    let t = ncx_proto::Text::new(raw);
    let shown = t.to_string();
    assert_eq!(
        shown,
        "nope\\nINFO ncx::audit: forged\\r\\t\\u{1b}[31mred\\u{202e}txt\\u{2028}ok"
    );
    assert!(!shown.chars().any(|c| c.is_control()));
    assert_eq!(t.as_str(), raw);
    // Ordinary text, accents and all, is shown as it is.
    assert_eq!(
        ncx_proto::Text::new("port 7000 — déjà pris").to_string(),
        "port 7000 — déjà pris"
    );
}
