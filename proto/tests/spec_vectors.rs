//! Checks every hex vector in `proto/README.md` against the implementation: valid vectors decode to
//! the message named here and re-encode to the same bytes; invalid vectors are rejected (never
//! "need more bytes").

use std::collections::BTreeMap;

use ncx_proto::{decode, encode_to_vec, AccessRules, DecodeError, ErrorCode, Message, Name, Text};

fn spec_vectors() -> BTreeMap<String, Vec<u8>> {
    let spec = include_str!("../README.md");
    let mut out = BTreeMap::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            for h in l.split_whitespace() {
                bytes.push(u8::from_str_radix(h, 16).expect("spec hex is valid"));
            }
        }
        assert!(
            out.insert(name.trim().to_owned(), bytes).is_none(),
            "duplicate vector {name}"
        );
    }
    out
}

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn expected_valid() -> BTreeMap<&'static str, Message> {
    BTreeMap::from([
        (
            "hello",
            Message::Hello {
                version: 1,
                identity: n("office"),
                instance: None,
                proof: [0xab; 32],
            },
        ),
        (
            "hello_instance",
            Message::Hello {
                version: 3,
                identity: n("office"),
                instance: Some(n("pc-1")),
                proof: [0xab; 32],
            },
        ),
        (
            "register_group",
            Message::Register {
                service: n("rdp"),
                remote_port: 3389,
                access: AccessRules::default(),
                group: Some(n("desks")),
            },
        ),
        (
            "register_udp",
            Message::RegisterUdp {
                service: n("dns"),
                remote_port: 53,
                access: AccessRules::default(),
            },
        ),
        (
            "register_private_udp",
            Message::RegisterPrivateUdp {
                service: n("dns"),
                visitors: vec![n("alice")],
            },
        ),
        (
            "visit_udp",
            Message::VisitUdp {
                owner: n("office"),
                service: n("dns"),
            },
        ),
        (
            "register_private_group",
            Message::RegisterPrivate {
                service: n("rdp"),
                visitors: vec![n("alice")],
                group: Some(n("desks")),
            },
        ),
        (
            "service_unhealthy",
            Message::ServiceHealth {
                service: n("rdp"),
                unhealthy: Some(Text::new("down")),
            },
        ),
        (
            "service_healthy",
            Message::ServiceHealth {
                service: n("rdp"),
                unhealthy: None,
            },
        ),
        ("welcome", Message::Welcome { version: 1 }),
        (
            "register",
            Message::Register {
                service: n("rdp"),
                remote_port: 3389,
                access: AccessRules::default(),
                group: None,
            },
        ),
        (
            "register_with_rules",
            Message::Register {
                service: n("rdp"),
                remote_port: 3389,
                access: AccessRules {
                    allow: vec!["203.0.113.0/24".parse().unwrap()],
                    deny: vec!["2001:db8::/32".parse().unwrap()],
                },
                group: None,
            },
        ),
        ("withdraw", Message::Withdraw { service: n("rdp") }),
        ("withdrawn", Message::Withdrawn { service: n("rdp") }),
        (
            "registered",
            Message::Registered {
                service: n("web"),
                remote_port: 20001,
            },
        ),
        (
            "register_private",
            Message::RegisterPrivate {
                service: n("rdp"),
                visitors: vec![n("alice"), n("bob")],
                group: None,
            },
        ),
        (
            "registered_private",
            Message::Registered {
                service: n("rdp"),
                remote_port: 0,
            },
        ),
        (
            "visit",
            Message::Visit {
                owner: n("office"),
                service: n("rdp"),
            },
        ),
        (
            "service_refused",
            Message::ServiceRefused {
                service: n("ssh"),
                code: ErrorCode::PortNotAllowed,
                message: Text::new("no"),
            },
        ),
        (
            "error",
            Message::Error {
                code: ErrorCode::BadToken,
                message: Text::new("bad token"),
            },
        ),
        ("ping", Message::Ping(7)),
        ("pong", Message::Pong(7)),
        (
            "go_away",
            Message::GoAway {
                code: ErrorCode::ShuttingDown,
                message: Text::new("restarted"),
            },
        ),
        (
            "visitor_header_v4",
            Message::VisitorHeader {
                service: n("rdp"),
                visitor: "203.0.113.7:51234".parse().unwrap(),
                public: "198.51.100.1:3389".parse().unwrap(),
            },
        ),
        (
            "visitor_header_v6",
            Message::VisitorHeader {
                service: n("ssh"),
                visitor: "[2001:db8::1]:443".parse().unwrap(),
                public: "[2001:db8::2]:22".parse().unwrap(),
            },
        ),
        (
            "visitor_connected",
            Message::VisitorStatus { refusal: None },
        ),
        (
            "visitor_refused",
            Message::VisitorStatus {
                refusal: Some((ErrorCode::LocalRefused, Text::new("refused"))),
            },
        ),
    ])
}

fn expected_invalid() -> BTreeMap<&'static str, DecodeError> {
    BTreeMap::from([
        ("invalid_too_long", DecodeError::FrameTooLong(4097)),
        ("invalid_empty", DecodeError::EmptyFrame),
        ("invalid_unknown_type", DecodeError::UnknownType(0x7f)),
        ("invalid_trailing", DecodeError::TrailingBytes(1)),
        (
            "invalid_name",
            DecodeError::BadName(ncx_proto::NameError::BadChar(' ')),
        ),
        ("invalid_healthy_with_reason", DecodeError::HealthyWithText),
        ("invalid_health_flag", DecodeError::BadFlag(2)),
        (
            "invalid_too_many_visitors",
            DecodeError::TooManyVisitors(33),
        ),
        (
            "invalid_cidr",
            DecodeError::BadCidr(ncx_proto::CidrError::HostBits("10.0.0.1/8".into())),
        ),
    ])
}

#[test]
fn every_spec_vector_is_checked() {
    let spec: Vec<String> = spec_vectors()
        .into_keys()
        .filter(|k| !k.contains("datagram"))
        .collect();
    let mut known: Vec<String> = expected_valid()
        .into_keys()
        .chain(expected_invalid().into_keys())
        .map(str::to_owned)
        .collect();
    known.sort();
    assert_eq!(
        spec, known,
        "the spec's vectors and this test's list differ"
    );
}

#[test]
fn valid_vectors_decode_and_reencode_byte_identical() {
    let spec = spec_vectors();
    for (name, msg) in expected_valid() {
        let bytes = &spec[name];
        assert_eq!(&encode_to_vec(&msg), bytes, "encoding of {name}");
        let (decoded, used) = decode(bytes).unwrap().unwrap();
        assert_eq!(decoded, msg, "decoding of {name}");
        assert_eq!(used, bytes.len(), "{name} consumed");
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    let spec = spec_vectors();
    for (name, err) in expected_invalid() {
        assert_eq!(decode(&spec[name]), Err(err), "{name}");
    }
}

#[test]
fn every_strict_prefix_of_a_valid_vector_needs_more_bytes() {
    let spec = spec_vectors();
    for name in expected_valid().keys() {
        let bytes = &spec[*name];
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "{name} cut at {cut}");
        }
    }
}

/// The datagram vectors: the valid ones read as the datagrams named and write back byte for
/// byte; the invalid one is refused from its two bytes.
#[test]
fn datagram_vectors_read_and_write_back() {
    use ncx_proto::{encode_datagram, DatagramError, DatagramReader};
    let spec = spec_vectors();
    let names: Vec<&String> = spec.keys().filter(|k| k.contains("datagram")).collect();
    assert_eq!(
        names,
        [
            "datagram_empty_then_one_byte",
            "datagram_hello",
            "invalid_datagram_too_long"
        ]
    );
    for (name, want) in [
        ("datagram_hello", vec![b"hello".to_vec()]),
        (
            "datagram_empty_then_one_byte",
            vec![Vec::new(), b"a".to_vec()],
        ),
    ] {
        let bytes = &spec[name];
        let mut r = DatagramReader::new();
        let (mut rest, mut got) = (&bytes[..], Vec::new());
        while !rest.is_empty() {
            let (n, d) = r.feed(rest).unwrap();
            got.extend(d);
            rest = &rest[n..];
        }
        assert_eq!(got, want, "{name}");
        let mut again = Vec::new();
        for d in &got {
            encode_datagram(d, &mut again).unwrap();
        }
        assert_eq!(&again, bytes, "{name} writes back");
    }
    assert_eq!(
        DatagramReader::new().feed(&spec["invalid_datagram_too_long"]),
        Err(DatagramError::TooLong(65_508))
    );
}
