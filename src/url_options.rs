//! The query of a sink or source URL (`nats://…?stream=logs&token=…`): `key=value` pairs split
//! by `&`, each value `%`-decoded, so a value holding `&`, `#` or `%` is written `%26`, `%23`,
//! `%25`. `+` stays `+` (no form decoding: MQTT topic filters use it as a wildcard). One reading
//! for the NATS and object-store sinks and the MQTT source.

/// The options of `query` in order, each value decoded and not empty.
pub(crate) fn options(query: &str) -> Result<Vec<(&str, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("option {pair:?} has no value"))?;
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| format!("option {k}: {v:?} is not UTF-8 once decoded"))?;
            if v.is_empty() {
                return Err(format!("option {k} is empty"));
            }
            Ok((k, v.into_owned()))
        })
        .collect()
}

/// A yes/no option: `true` or `1`, `false` or `0`.
pub(crate) fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{name}={value:?}: expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_decoded_and_plus_stays() {
        let got = super::options("a=x%26y&topics=a/+/b&&p=%23").unwrap();
        assert_eq!(
            got,
            [
                ("a", "x&y".into()),
                ("topics", "a/+/b".into()),
                ("p", "#".into())
            ]
        );
        for (query, says) in [("a", "no value"), ("a=", "is empty"), ("a=%ff", "UTF-8")] {
            let e = super::options(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }
}
