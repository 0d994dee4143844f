//! Pure reading of a CoAP request: method, resource path, query (credentials and QoS),
//! Observe and Content-Format, and which device and MQTT topic it names.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use rookery_codec::QoS;

use super::topics;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET: read the last value (or observe it).
    Get,
    /// POST: publish.
    Post,
    /// PUT: publish retained.
    Put,
    /// DELETE: clear the retained value.
    Delete,
}

/// Observe option of a GET (RFC 7641).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// 0: register.
    Register,
    /// 1: deregister.
    Deregister,
}

/// A request, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The device it speaks for.
    pub device: String,
    /// Username and password from the query, when given.
    pub credentials: Option<(String, Vec<u8>)>,
    /// The resource path below the device.
    pub resource: Vec<String>,
    /// QoS of the publish or subscription (`qos=` in the query; 1 by default).
    pub qos: QoS,
    /// The Observe option of a GET.
    pub observe: Option<Observe>,
    /// The Content-Format number.
    pub content_format: Option<u16>,
}

/// A refusal: the response code and a diagnostic payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The response code.
    pub code: ResponseType,
    /// Why, for the diagnostic payload (RFC 7252 section 5.5.2).
    pub reason: String,
}

fn refuse(code: ResponseType, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

/// An unsigned option value (big-endian, at most four bytes).
pub fn uint_option(bytes: &[u8]) -> Option<u32> {
    if bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
}

/// The shortest big-endian encoding of an unsigned option value.
pub fn uint_bytes(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, Refusal> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| refuse(ResponseType::BadRequest, format!("{what} is not UTF-8")))
}

/// Reads a request. `anonymous` says whether requests without credentials are served (the
/// device id is then the first path segment). `authenticated` is the PSK identity of a DTLS
/// session: it names the device, the whole path is the resource, and `u=` and `p=` are
/// ignored.
pub fn parse(
    packet: &Packet,
    anonymous: bool,
    authenticated: Option<&str>,
) -> Result<Request, Refusal> {
    let method = match packet.header.code {
        MessageClass::Request(RequestType::Get) => Method::Get,
        MessageClass::Request(RequestType::Post) => Method::Post,
        MessageClass::Request(RequestType::Put) => Method::Put,
        MessageClass::Request(RequestType::Delete) => Method::Delete,
        MessageClass::Request(_) => {
            return Err(refuse(
                ResponseType::MethodNotAllowed,
                "GET, POST, PUT and DELETE only",
            ));
        }
        _ => return Err(refuse(ResponseType::BadRequest, "not a request")),
    };
    let mut path = Vec::new();
    for segment in packet.get_option(CoapOption::UriPath).into_iter().flatten() {
        path.push(utf8(segment, "Uri-Path")?);
    }
    let (mut user, mut password, mut qos) = (None, None, QoS::AtLeastOnce);
    for item in packet
        .get_option(CoapOption::UriQuery)
        .into_iter()
        .flatten()
    {
        let item = utf8(item, "Uri-Query")?;
        let (key, value) = item.split_once('=').unwrap_or((item.as_str(), ""));
        match key {
            "u" => user = Some(value.to_owned()),
            "p" => password = Some(value.as_bytes().to_vec()),
            "qos" => {
                qos = match value {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    _ => {
                        return Err(refuse(
                            ResponseType::BadRequest,
                            format!("qos={value}: 0, 1 or 2"),
                        ));
                    }
                }
            }
            // Other parameters are the application's; they do not change the mapping.
            _ => {}
        }
    }
    let observe = match packet.get_first_option(CoapOption::Observe) {
        None => None,
        Some(v) => match uint_option(v) {
            Some(0) => Some(Observe::Register),
            Some(1) => Some(Observe::Deregister),
            _ => return Err(refuse(ResponseType::BadOption, "Observe must be 0 or 1")),
        },
    };
    let observe = if method == Method::Get { observe } else { None };
    let content_format = match packet.get_first_option(CoapOption::ContentFormat) {
        None => None,
        Some(v) => match uint_option(v).and_then(|n| u16::try_from(n).ok()) {
            Some(n) => Some(n),
            None => return Err(refuse(ResponseType::BadOption, "bad Content-Format")),
        },
    };
    let (device, credentials, resource) = match (authenticated, user, password) {
        (Some(identity), _, _) => {
            topics::check_device_id(identity)
                .map_err(|reason| refuse(ResponseType::Forbidden, reason))?;
            (identity.to_owned(), None, path)
        }
        (None, Some(user), password) => {
            topics::check_device_id(&user)
                .map_err(|reason| refuse(ResponseType::BadRequest, reason))?;
            let credentials = (user.clone(), password.unwrap_or_default());
            (user, Some(credentials), path)
        }
        (None, None, Some(_)) => {
            return Err(refuse(ResponseType::BadRequest, "p= without u="));
        }
        (None, None, None) => {
            if !anonymous {
                return Err(refuse(
                    ResponseType::Unauthorized,
                    "credentials required: ?u=USER&p=PASSWORD",
                ));
            }
            let mut path = path.into_iter();
            let Some(device) = path.next() else {
                return Err(refuse(ResponseType::BadRequest, "no device id in the path"));
            };
            topics::check_device_id(&device)
                .map_err(|reason| refuse(ResponseType::BadRequest, reason))?;
            (device, None, path.collect())
        }
    };
    topics::check_resource(&resource).map_err(|reason| refuse(ResponseType::BadRequest, reason))?;
    Ok(Request {
        method,
        device,
        credentials,
        resource,
        qos,
        observe,
        content_format,
    })
}

/// The MQTT 5.0 content type for a CoAP Content-Format number.
pub fn content_type(format: u16) -> String {
    match format {
        0 => "text/plain;charset=utf-8".into(),
        40 => "application/link-format".into(),
        41 => "application/xml".into(),
        42 => "application/octet-stream".into(),
        50 => "application/json".into(),
        60 => "application/cbor".into(),
        110 => "application/senml+json".into(),
        112 => "application/senml+cbor".into(),
        n => n.to_string(),
    }
}

/// The CoAP Content-Format number for an MQTT 5.0 content type, when it has one.
pub fn content_format(content_type: &str) -> Option<u16> {
    let media = content_type.trim();
    Some(match media {
        "text/plain;charset=utf-8" | "text/plain; charset=utf-8" | "text/plain" => 0,
        "application/link-format" => 40,
        "application/xml" => 41,
        "application/octet-stream" => 42,
        "application/json" => 50,
        "application/cbor" => 60,
        "application/senml+json" => 110,
        "application/senml+cbor" => 112,
        other => return other.parse().ok(),
    })
}

/// A response code as text, `2.04`.
pub fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

#[cfg(test)]
mod tests {
    use coap_lite::{CoapOption, MessageType, Packet};

    use super::*;

    fn request(code: RequestType, path: &str, query: &[&str]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(code);
        for s in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        p
    }

    #[test]
    fn anonymous_requests_name_the_device_first() {
        let r = parse(
            &request(RequestType::Post, "dev42/sensor/temp", &[]),
            true,
            None,
        )
        .unwrap();
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.device, "dev42");
        assert_eq!(r.resource, ["sensor", "temp"]);
        assert_eq!(r.qos, QoS::AtLeastOnce);
        assert_eq!(r.credentials, None);
        let refused = parse(&request(RequestType::Post, "dev42/t", &[]), false, None).unwrap_err();
        assert_eq!(refused.code, ResponseType::Unauthorized);
        let refused = parse(&request(RequestType::Post, "dev42", &[]), true, None).unwrap_err();
        assert_eq!(refused.code, ResponseType::BadRequest);
    }

    #[test]
    fn credentials_name_the_device() {
        let r = parse(
            &request(
                RequestType::Put,
                "sensor/temp",
                &["u=dev1", "p=s3cr=t", "qos=2"],
            ),
            false,
            None,
        )
        .unwrap();
        assert_eq!(r.device, "dev1");
        assert_eq!(r.resource, ["sensor", "temp"]);
        assert_eq!(r.credentials, Some(("dev1".into(), b"s3cr=t".to_vec())));
        assert_eq!(r.qos, QoS::ExactlyOnce);
        assert_eq!(r.method, Method::Put);
        let bad = parse(
            &request(RequestType::Put, "t", &["u=a/b", "p=x"]),
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(bad.code, ResponseType::BadRequest);
        let bad = parse(&request(RequestType::Put, "t", &["p=x"]), true, None).unwrap_err();
        assert_eq!(bad.code, ResponseType::BadRequest);
    }

    #[test]
    fn a_psk_identity_names_the_device_whatever_the_query_says() {
        let r = parse(
            &request(RequestType::Post, "sensor/temp", &["u=other", "p=x"]),
            false,
            Some("dev7"),
        )
        .unwrap();
        assert_eq!(r.device, "dev7");
        assert_eq!(r.resource, ["sensor", "temp"]);
        assert_eq!(r.credentials, None);
        let r = parse(&request(RequestType::Get, "t", &["p=x"]), false, Some("d")).unwrap();
        assert_eq!(r.device, "d");
        let bad = parse(&request(RequestType::Get, "t", &[]), true, Some("a/b")).unwrap_err();
        assert_eq!(bad.code, ResponseType::Forbidden);
    }

    #[test]
    fn bad_queries_paths_and_methods_are_refused() {
        for (code, path, query, expected) in [
            (
                RequestType::Post,
                "d/t",
                &["qos=3"][..],
                ResponseType::BadRequest,
            ),
            (RequestType::Post, "d/+", &[][..], ResponseType::BadRequest),
            (RequestType::Post, "d/#", &[][..], ResponseType::BadRequest),
            (
                RequestType::Fetch,
                "d/t",
                &[][..],
                ResponseType::MethodNotAllowed,
            ),
            (
                RequestType::Patch,
                "d/t",
                &[][..],
                ResponseType::MethodNotAllowed,
            ),
        ] {
            let refused = parse(&request(code, path, query), true, None).unwrap_err();
            assert_eq!(refused.code, expected, "{path} {query:?}");
        }
    }

    #[test]
    fn observe_and_content_format_are_read() {
        let mut p = request(RequestType::Get, "d/t", &[]);
        p.add_option(CoapOption::Observe, vec![]);
        p.add_option(CoapOption::ContentFormat, vec![50]);
        let r = parse(&p, true, None).unwrap();
        assert_eq!(r.observe, Some(Observe::Register));
        assert_eq!(r.content_format, Some(50));
        let mut p = request(RequestType::Get, "d/t", &[]);
        p.add_option(CoapOption::Observe, vec![1]);
        assert_eq!(
            parse(&p, true, None).unwrap().observe,
            Some(Observe::Deregister)
        );
        let mut p = request(RequestType::Get, "d/t", &[]);
        p.add_option(CoapOption::Observe, vec![7]);
        assert_eq!(
            parse(&p, true, None).unwrap_err().code,
            ResponseType::BadOption
        );
    }

    #[test]
    fn content_formats_round_trip() {
        for n in [0u16, 40, 41, 42, 50, 60, 110, 112, 11542] {
            assert_eq!(content_format(&content_type(n)), Some(n), "{n}");
        }
        assert_eq!(content_format("image/png"), None);
        assert_eq!(code_text(0x44), "2.04");
        assert_eq!(code_text(0x84), "4.04");
        assert_eq!(code_text(0xa0), "5.00");
        assert_eq!(uint_bytes(0), Vec::<u8>::new());
        assert_eq!(uint_bytes(300), vec![1, 44]);
        assert_eq!(uint_option(&[1, 44]), Some(300));
        assert_eq!(uint_option(&[1, 2, 3, 4, 5]), None);
    }
}
