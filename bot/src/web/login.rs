//! Signing in and out: local accounts, a CSRF token on the form, the session cookie.

use super::*;

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    me: Option<Me>,
    notice: Option<String>,
    error: Option<String>,
    csrf: String,
}

pub(super) fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn login_form(st: &AdminState, error: Option<String>) -> Response {
    let csrf = random_hex();
    let mut r = page(LoginPage {
        me: None,
        notice: None,
        error,
        csrf: csrf.clone(),
    });
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &csrf, 1800, st.secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub(super) async fn login_page(State(st): State<AdminState>) -> Response {
    login_form(&st, None)
}

pub(super) async fn login(
    State(st): State<AdminState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    // The login form's token must match its cookie (a login CSRF guard).
    let sent = f.get("csrf").map(String::as_str).unwrap_or("");
    match cookie(&headers, LOGIN_COOKIE) {
        Some(c) if !sent.is_empty() && constant_eq(c.as_bytes(), sent.as_bytes()) => {}
        _ => return Denied::Csrf.into_response(),
    }
    let email = f.get("email").map(String::as_str).unwrap_or("");
    let password = f.get("password").map(String::as_str).unwrap_or("");
    let address = peer.ip();
    // Locked out: refused before any password is hashed.
    if let Some(wait) = st.throttle.wait(email, address, std::time::Instant::now()) {
        tracing::warn!(%address, "refused a sign-in during a lock-out");
        return locked_out(&st, wait);
    }
    // At most a few hashes at once, whoever asks.
    let Ok(Ok(_permit)) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        st.throttle.hashes.acquire(),
    )
    .await
    else {
        let mut r = login_form(
            &st,
            Some("Airlock is busy checking other sign-ins; try again in a moment.".into()),
        );
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    };
    match st.store.sign_in(email, password).await {
        Ok(Some((token, s))) => {
            st.throttle.succeeded(email);
            audit_by(&st, &s.human, "web.sign_in", &s.human.id, json!({})).await;
            let mut r = Redirect::to("/overview").into_response();
            let max = airlock_core::store::WEB_SESSION_MS / 1000;
            if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, &token, max, st.secure)) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(None) => {
            let now = std::time::Instant::now();
            st.throttle.failed(email, address, now);
            let entry = NewAudit {
                actor: format!("web:{address}"),
                action: "web.sign_in_failed".into(),
                target: email.chars().take(120).collect(),
                session_id: None,
                detail: json!({"address": address.to_string()}),
            };
            settle("an audit row", || st.store.audit(entry.clone())).await;
            if let Some(wait) = st.throttle.wait(email, address, now) {
                return locked_out(&st, wait);
            }
            let mut r = login_form(&st, Some("The email or the password is wrong.".into()));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Err(e) => internal(e),
    }
}

/// Too many wrong passwords for this account or from this address.
fn locked_out(st: &AdminState, wait: std::time::Duration) -> Response {
    let mut r = login_form(
        st,
        Some(format!(
            "Too many wrong passwords for this account or from this address; try again in {}.",
            throttle::in_words(wait)
        )),
    );
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(super) async fn logout(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Err(d) = admin_post(&st, &headers, &f).await {
        return d.into_response();
    }
    if let Some(t) = cookie(&headers, COOKIE) {
        settle("a sign-out", || st.store.sign_out(t)).await;
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, "", 0, st.secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
