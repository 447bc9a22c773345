//! The optional bearer token of the doors (`--auth-token-file`): every call must carry
//! `authorization: Bearer TOKEN`. Compared in constant time; never logged. Health and
//! reflection stay open, for load balancers' probes.

use std::sync::Arc;

use subtle::ConstantTimeEq as _;
use tonic::{Request, Status};

/// The token a call must carry, or none.
#[derive(Clone, Default)]
pub struct TokenCheck {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() {
            "TokenCheck(<redacted>)"
        } else {
            "TokenCheck(none)"
        })
    }
}

impl TokenCheck {
    pub fn new(token: Option<String>) -> TokenCheck {
        TokenCheck {
            token: token.map(|t| Arc::from(t.into_bytes())),
        }
    }

    /// A tonic interceptor: lets the call through, or answers `UNAUTHENTICATED`.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.check_header(given) {
            Ok(()) => Ok(request),
            Err(reason) => Err(Status::unauthenticated(reason)),
        }
    }

    /// Checks an `authorization` header's value (the HTTP door's, or gRPC's); the error says
    /// why it does not pass.
    pub fn check_header(&self, value: Option<&str>) -> Result<(), &'static str> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        match value.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(given) if bool::from(given.as_bytes().ct_eq(want)) => Ok(()),
            Some(_) => Err("wrong bearer token"),
            None => Err("this sidelog asks for a bearer token: send authorization: Bearer TOKEN"),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn only_the_right_token_passes() {
        let check = TokenCheck::new(Some("0123456789abcdef".into()));
        assert!(check.check(call(Some("Bearer 0123456789abcdef"))).is_ok());
        for bad in [
            None,
            Some("Bearer 0123456789abcdeX"),
            Some("Bearer x"),
            Some("0123456789abcdef"),
        ] {
            let err = check.check(call(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(TokenCheck::default().check(call(None)).is_ok());
        assert!(!format!("{check:?}").contains("0123"));
    }
}
