//! The admin page over plain HTTP (no browser): a password for a human, a client that does
//! not follow redirects, sign-in and pages read with the session cookie.

use crate::Install;

/// Sets `email`'s password with `airlock human password`.
pub fn set_password(install: &Install, email: &str, password: &str) {
    let out = install.run_with_stdin(
        &["human", "password", email],
        format!("{password}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", crate::stderr(&out));
}

/// A client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` part of the response's `name` cookie.
pub fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_string()
}

/// Signs in at `base` as `email` and returns the session cookie.
pub async fn sign_in(http: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login = cookie(&form, "airlock_login");
    let csrf = login.trim_start_matches("airlock_login=").to_string();
    let r = http
        .post(format!("{base}/login"))
        .header("Cookie", &login)
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "signing in as {email}");
    cookie(&r, "airlock_session")
}

/// A page's HTML, read with the session cookie (200 expected).
pub async fn page(http: &reqwest::Client, base: &str, session: &str, path: &str) -> String {
    let r = http
        .get(format!("{base}{path}"))
        .header("Cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text().await.unwrap()
}
