//! Property tests: encode/decode round trips, the visitor header, and streaming reassembly, over
//! generated messages (the fuzz targets cover the same properties with coverage guidance).

use std::net::{IpAddr, SocketAddr};

use ncx_proto::{check, decode, encode_to_vec, ErrorCode, Message, Name, Text};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Name> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| Name::new(s).unwrap())
}

fn text() -> impl Strategy<Value = Text> {
    any::<String>().prop_map(Text::new)
}

fn code() -> impl Strategy<Value = ErrorCode> {
    (1u16..=u16::MAX).prop_map(ErrorCode::from_u16)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn cidr() -> impl Strategy<Value = ncx_proto::Cidr> {
    (any::<IpAddr>(), any::<u8>()).prop_map(|(ip, p)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        ncx_proto::Cidr::new(ip, p % (max + 1)).unwrap()
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            name(),
            proptest::option::of(name()),
            any::<[u8; 32]>()
        )
            .prop_map(|(version, identity, instance, proof)| Message::Hello {
                version,
                identity,
                instance,
                proof,
            }),
        any::<u16>().prop_map(|version| Message::Welcome { version }),
        (
            name(),
            any::<u16>(),
            proptest::collection::vec(cidr(), 0..4),
            proptest::collection::vec(cidr(), 0..4),
            proptest::option::of(name())
        )
            .prop_map(
                |(service, remote_port, allow, deny, group)| Message::Register {
                    service,
                    remote_port,
                    access: ncx_proto::AccessRules { allow, deny },
                    group,
                }
            ),
        (
            name(),
            proptest::collection::vec(name(), 0..=ncx_proto::MAX_VISITORS),
            proptest::option::of(name())
        )
            .prop_map(|(service, visitors, group)| Message::RegisterPrivate {
                service,
                visitors,
                group
            }),
        (name(), proptest::option::of(text())).prop_map(|(service, reason)| {
            Message::ServiceHealth {
                service,
                unhealthy: reason,
            }
        }),
        (
            name(),
            any::<u16>(),
            proptest::collection::vec(cidr(), 0..4),
            proptest::collection::vec(cidr(), 0..4)
        )
            .prop_map(|(service, remote_port, allow, deny)| Message::RegisterUdp {
                service,
                remote_port,
                access: ncx_proto::AccessRules { allow, deny },
            }),
        (name(), name()).prop_map(|(owner, service)| Message::Visit { owner, service }),
        (name(), name()).prop_map(|(owner, service)| Message::VisitUdp { owner, service }),
        (
            name(),
            proptest::collection::vec(name(), 0..=ncx_proto::MAX_VISITORS)
        )
            .prop_map(|(service, visitors)| Message::RegisterPrivateUdp { service, visitors }),
        (name(), any::<u16>()).prop_map(|(service, remote_port)| Message::Registered {
            service,
            remote_port
        }),
        (name(), code(), text()).prop_map(|(service, code, message)| Message::ServiceRefused {
            service,
            code,
            message
        }),
        (code(), text()).prop_map(|(code, message)| Message::Error { code, message }),
        (code(), text()).prop_map(|(code, message)| Message::GoAway { code, message }),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
        (name(), addr(), addr()).prop_map(|(service, visitor, public)| Message::VisitorHeader {
            service,
            visitor,
            public
        }),
        proptest::option::of((code(), text()))
            .prop_map(|refusal| Message::VisitorStatus { refusal }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        check::round_trip(&msg);
    }

    #[test]
    fn visitor_header_round_trips_and_has_the_documented_size(service in name(), visitor in addr(), public in addr()) {
        let msg = Message::VisitorHeader { service: service.clone(), visitor, public };
        let bytes = encode_to_vec(&msg);
        let addr_len = |a: SocketAddr| 1 + if a.is_ipv4() { 4 } else { 16 } + 2;
        // len(2) type(1) name(1 + n) then two addresses: family(1) ip port(2)
        prop_assert_eq!(bytes.len(), 2 + 1 + 1 + service.as_str().len() + addr_len(visitor) + addr_len(public));
        prop_assert_eq!(decode(&bytes).unwrap(), Some((msg, bytes.len())));
    }

    #[test]
    fn a_stream_split_anywhere_reassembles(msgs in proptest::collection::vec(message(), 0..16),
                                           cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
        check::streaming(&msgs, &cuts);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        check::decode_arbitrary(&data);
    }
}
