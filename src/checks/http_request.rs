//! What an http check sends: its method, headers (values inline, or from an environment
//! variable or Secret and then never shown) and body.

use crate::api::{HttpCheck, HttpMethod};
use crate::policy::validate::{Errors, UrlResolver};
use crate::secret::SecretValue;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HeaderValue {
    Inline(String),
    Secret(SecretValue),
}

impl HeaderValue {
    fn expose(&self) -> &str {
        match self {
            HeaderValue::Inline(value) => value,
            HeaderValue::Secret(value) => value.expose(),
        }
    }
}

/// The validated request of an http check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestSpec {
    pub method: HttpMethod,
    pub headers: Vec<(String, HeaderValue)>,
    pub body: Option<String>,
}

impl RequestSpec {
    /// Problems go to `errors` at paths under `block`; a value read from a Secret is never
    /// quoted in them.
    pub fn validate(
        check: &HttpCheck,
        values: &dyn UrlResolver,
        block: &str,
        errors: &mut Errors,
    ) -> Self {
        let method = check.method.unwrap_or_default();
        if check.body.is_some() && matches!(method, HttpMethod::Get | HttpMethod::Head) {
            errors.push(
                format!("{block}.body"),
                "a body needs a method other than GET or HEAD",
            );
        }
        let mut headers = Vec::with_capacity(check.headers.len());
        for (index, header) in check.headers.iter().enumerate() {
            let path = format!("{block}.headers[{index}]");
            if reqwest::header::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                errors.push(
                    format!("{path}.name"),
                    format!("{:?} is not an HTTP header name", header.name),
                );
            }
            let (value, at) = match (&header.value, &header.value_from) {
                (Some(value), None) => (HeaderValue::Inline(value.clone()), "value"),
                (None, Some(from)) => {
                    let at = if from.env.is_some() {
                        "valueFrom.env"
                    } else {
                        "valueFrom.secretKeyRef"
                    };
                    match values.resolve(from) {
                        Ok(value) => (HeaderValue::Secret(SecretValue::new(value)), at),
                        Err(e) => {
                            errors.push(format!("{path}.{at}"), e);
                            continue;
                        }
                    }
                }
                _ => {
                    errors.push(path, "set exactly one of value or valueFrom");
                    continue;
                }
            };
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                errors.push(
                    format!("{path}.{at}"),
                    "not a valid HTTP header value (control characters or non-ASCII)",
                );
            }
            headers.push((header.name.clone(), value));
        }
        Self {
            method,
            headers,
            body: check.body.clone(),
        }
    }

    pub fn build(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        let method = match self.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Head => reqwest::Method::HEAD,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
            HttpMethod::Delete => reqwest::Method::DELETE,
            HttpMethod::Options => reqwest::Method::OPTIONS,
        };
        let mut request = client.request(method, url);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.expose());
        }
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        request
    }
}
