//! Who is calling: the API key from `Authorization: Bearer KEY` or `X-API-Key: KEY`, looked up
//! among the config's tenants in constant time ([`Tenants::by_api_key`]). The key itself is
//! never logged, stored or forwarded: the daemon only hears the tenant's name.

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use crate::tenants::Tenants;

/// Name of the header that carries a bare key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key a request presents, if any: a `Bearer` credential (scheme case-insensitive) or the
/// `X-API-Key` header. `Err` when a header is there but unusable (not visible ASCII, another
/// scheme, empty).
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        let (scheme, key) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "use `Authorization: Bearer KEY` or `X-API-Key: KEY`",
            ));
        }
        let key = key.trim();
        if key.is_empty() {
            return Err(ApiError::unauthorized("the Bearer credential is empty"));
        }
        return Ok(Some(key));
    }
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let key = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the X-API-Key header is not ASCII"))?
            .trim();
        if key.is_empty() {
            return Err(ApiError::unauthorized("the X-API-Key header is empty"));
        }
        return Ok(Some(key));
    }
    Ok(None)
}

/// The tenant's name for the request's key; 401 without a key or with one no tenant holds.
pub fn authenticate(tenants: &Tenants, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = presented_key(headers)?.ok_or_else(|| {
        ApiError::unauthorized(
            "an API key is required: `Authorization: Bearer KEY` or `X-API-Key: KEY`",
        )
    })?;
    tenants
        .by_api_key(key)
        .map(|tenant| tenant.name.clone())
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::Config;
    use crate::tenants::hash_key;

    fn tenants() -> Tenants {
        let text = format!(
            "[[tenants]]\nname = \"acme\"\napi_key_sha256 = [\"{}\"]\n",
            hash_key("sf_right")
        );
        let config: Config = toml::from_str(&text).unwrap();
        Tenants::from_config(&config.validated().unwrap(), 0).unwrap()
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn bearer_and_x_api_key_both_work() {
        let tenants = tenants();
        for h in [
            headers("authorization", "Bearer sf_right"),
            headers("authorization", "bearer  sf_right "),
            headers("x-api-key", "sf_right"),
        ] {
            assert_eq!(authenticate(&tenants, &h).unwrap(), "acme");
        }
    }

    #[test]
    fn missing_wrong_or_odd_keys_are_401() {
        let tenants = tenants();
        for h in [
            HeaderMap::new(),
            headers("authorization", "Bearer sf_wrong"),
            headers("authorization", "Basic c2ZfcmlnaHQ="),
            headers("authorization", "Bearer"),
            headers("x-api-key", ""),
        ] {
            let err = authenticate(&tenants, &h).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED, "{h:?}");
        }
    }
}
