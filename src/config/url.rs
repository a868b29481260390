//! Endpoint URLs and header lists as the variables write them, and how they are shown.

/// A URL as it may appear in logs: scheme, host, port and path; no credentials, no query.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// A URL as written in a variable, safe to show in an error line: credentials (`user:pass@`)
/// and the query are replaced by `<redacted>`. Works on text that is not a valid URL too (the
/// case where it is shown), erring on the side of hiding.
pub fn redact_url_text(raw: &str) -> String {
    let raw = raw.trim();
    let authority_start = raw.find("://").map_or(0, |i| i + 3);
    // Credentials first: a password may itself hold `?` or `#`, so the last `@` anywhere after
    // the scheme ends them (a query holding `@` is hidden too: erring on the side of hiding).
    let (shown, rest) = match raw[authority_start..].rfind('@') {
        Some(at) => (
            format!("{}<redacted>@", &raw[..authority_start]),
            &raw[authority_start + at + 1..],
        ),
        None => (raw[..authority_start].to_string(), &raw[authority_start..]),
    };
    match rest.find(['?', '#']) {
        Some(i) => format!("{shown}{}?<redacted>", &rest[..i]),
        None => format!("{shown}{rest}"),
    }
}

/// An endpoint from a variable: an absolute http(s) URL with a host. Credentials written into it
/// (`http://user:pass@host/`) are taken out of the URL, so that it never carries them into a log
/// line or a connection pool's key, and returned as the value of an HTTP Basic `Authorization`
/// header, which is what a user who wrote them expects to be sent.
pub fn endpoint_url(raw: &str) -> Option<(reqwest::Url, Option<String>)> {
    let mut url = reqwest::Url::parse(raw.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return None;
    }
    let authorization = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        use base64::Engine as _;
        let user = percent_decode(url.username())?;
        let password = percent_decode(url.password().unwrap_or(""))?;
        url.set_username("").ok()?;
        url.set_password(None).ok()?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Some(format!("Basic {token}"))
    };
    Some((url, authorization))
}

/// Adds the Basic authorization taken from an endpoint's URL, unless a header already sets it.
pub fn add_authorization(headers: &mut Vec<(String, String)>, authorization: Option<String>) {
    if let Some(value) = authorization {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            headers.push(("Authorization".into(), value));
        }
    }
}

/// Parses the W3C-baggage-like `key=value,key2=value2` list that `OTEL_EXPORTER_OTLP_HEADERS` uses.
pub fn parse_headers(raw: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let key = key.trim();
        let value = percent_decode(value.trim())?;
        let valid_name = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let valid_value = value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !valid_name || !valid_value {
            return None;
        }
        out.push((key.to_string(), value));
    }
    Some(out)
}

pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
