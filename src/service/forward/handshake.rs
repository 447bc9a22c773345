//! The forward protocol's handshake, when a shared key is set (`forward_shared_key_file`),
//! as Fluentd's `in_forward` does it: the server opens with `HELO` and a fresh nonce; the
//! client answers `PING` with its hostname, a salt and SHA-512(salt, hostname, nonce, key) in
//! hex; the server checks it and answers `PONG` with its own digest (so the client knows the
//! server has the key too), or with the reason it refuses. User names and passwords
//! (`<user>` sections) are not asked for.

use rmpv::Value;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// One connection's side of the handshake.
pub struct Handshake {
    nonce: [u8; 16],
    shared_key: std::sync::Arc<str>,
    hostname: String,
}

impl Handshake {
    /// With `nonce` fresh for this connection (from a generator seeded by the operating
    /// system: a client must not guess it).
    pub fn new(shared_key: std::sync::Arc<str>, hostname: String, nonce: [u8; 16]) -> Handshake {
        Handshake {
            nonce,
            shared_key,
            hostname,
        }
    }

    /// `["HELO", {nonce, auth: "", keepalive: true}]`.
    pub fn helo(&self) -> Vec<u8> {
        encode(&Value::Array(vec![
            Value::from("HELO"),
            Value::Map(vec![
                (Value::from("nonce"), Value::Binary(self.nonce.to_vec())),
                (Value::from("auth"), Value::from("")),
                (Value::from("keepalive"), Value::from(true)),
            ]),
        ]))
    }

    /// The answer to the client's first frame: `Ok(PONG)` when it is a `PING` with the right
    /// digest, else `Err((why, PONG))`, the refusal to send before closing.
    pub fn answer(&self, ping: &Value) -> Result<Vec<u8>, (String, Vec<u8>)> {
        let refuse = |why: &str| {
            let pong = encode(&Value::Array(vec![
                Value::from("PONG"),
                Value::from(false),
                Value::from(why),
                Value::from(""),
                Value::from(""),
            ]));
            (why.to_owned(), pong)
        };
        let Some(items) = ping.as_array() else {
            return Err(refuse("expected PING"));
        };
        let text = |i: usize| items.get(i).and_then(Value::as_slice);
        let (Some(b"PING"), Some(hostname), Some(salt), Some(digest)) =
            (text(0), text(1), text(2), text(3))
        else {
            return Err(refuse("expected PING, hostname, salt, digest"));
        };
        if items.len() != 6 {
            return Err(refuse("a PING has 6 items"));
        }
        let want = self.digest(salt, hostname);
        if !bool::from(want.as_bytes().ct_eq(digest)) {
            return Err(refuse("shared_key mismatch"));
        }
        Ok(encode(&Value::Array(vec![
            Value::from("PONG"),
            Value::from(true),
            Value::from(""),
            Value::from(self.hostname.as_str()),
            Value::from(self.digest(salt, self.hostname.as_bytes())),
        ])))
    }

    /// SHA-512(salt, hostname, nonce, shared key), lowercase hex.
    fn digest(&self, salt: &[u8], hostname: &[u8]) -> String {
        let sum = Sha512::new()
            .chain_update(salt)
            .chain_update(hostname)
            .chain_update(self.nonce)
            .chain_update(self.shared_key.as_bytes())
            .finalize();
        sum.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce_of(helo: &[u8]) -> Vec<u8> {
        let (value, _) = super::super::frame::next_value(helo).unwrap().unwrap();
        let options = value.as_array().unwrap()[1].as_map().unwrap().clone();
        let (_, nonce) = options
            .into_iter()
            .find(|(k, _)| k.as_str() == Some("nonce"))
            .unwrap();
        nonce.as_slice().unwrap().to_vec()
    }

    /// A client as Fluentd's `out_forward` computes its PING.
    fn ping(nonce: &[u8], key: &str) -> Value {
        let digest: String = Sha512::new()
            .chain_update(b"salt")
            .chain_update(b"client-host")
            .chain_update(nonce)
            .chain_update(key)
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Value::Array(vec![
            Value::from("PING"),
            Value::from("client-host"),
            Value::from("salt"),
            Value::from(digest),
            Value::from(""),
            Value::from(""),
        ])
    }

    #[test]
    fn the_right_key_gets_a_pong_the_server_proves_it_too_and_a_wrong_one_is_refused() {
        let server = Handshake::new("s3cret-shared-key".into(), "sidelog-host".into(), [7; 16]);
        let nonce = nonce_of(&server.helo());
        let pong = server.answer(&ping(&nonce, "s3cret-shared-key")).unwrap();
        let (pong, _) = super::super::frame::next_value(&pong).unwrap().unwrap();
        let pong = pong.as_array().unwrap();
        assert_eq!(pong[1], Value::from(true));
        let theirs: String = Sha512::new()
            .chain_update(b"salt")
            .chain_update(b"sidelog-host")
            .chain_update(&nonce)
            .chain_update(b"s3cret-shared-key")
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(pong[4].as_str(), Some(theirs.as_str()));

        let (why, refusal) = server.answer(&ping(&nonce, "wrong")).unwrap_err();
        assert_eq!(why, "shared_key mismatch");
        let (refusal, _) = super::super::frame::next_value(&refusal).unwrap().unwrap();
        assert_eq!(refusal.as_array().unwrap()[1], Value::from(false));
        let other = Handshake::new("s3cret-shared-key".into(), "h".into(), [8; 16]);
        assert!(
            other.answer(&ping(&nonce, "s3cret-shared-key")).is_err(),
            "another connection's nonce"
        );
        assert!(server.answer(&Value::from("PING")).is_err());
    }
}
