//! The login pages: plain server-rendered HTML forms, no script, every value escaped.

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The Content-Security-Policy of the pages: inline styles and the QR image only. No
/// `form-action`: browsers apply it to the redirect that follows a form post, which here goes to
/// the client application's own origin.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:sans-serif;max-width:28em;margin:3em auto}}label{{display:block;margin:.8em 0}}\
         input{{width:100%;padding:.4em}}.error{{color:#b00}}code{{word-break:break-all}}</style></head>\
         <body><h1>{}</h1>{}</body></html>",
        esc(title),
        esc(title),
        body
    )
}

fn error_line(error: Option<&str>) -> String {
    error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default()
}

/// The password form of an authorization request.
pub fn login(request: &str, tenant: &str, error: Option<&str>) -> String {
    page(
        "ログイン / Sign in",
        &format!(
            "<p>{}</p>{}<form method=\"post\" action=\"/auth/login\">\
             <input type=\"hidden\" name=\"request\" value=\"{}\">\
             <label>ユーザー名 / Username<input name=\"username\" autocomplete=\"username\" required></label>\
             <label>パスワード / Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button>次へ / Next</button></form>",
            esc(tenant),
            error_line(error),
            esc(request)
        ),
    )
}

/// The one-time-code form.
pub fn mfa(login: &str, error: Option<&str>) -> String {
    page(
        "ワンタイムコード / One-time code",
        &format!(
            "{}<form method=\"post\" action=\"/auth/mfa\"><input type=\"hidden\" name=\"login\" value=\"{}\">\
             <label>認証アプリの6桁のコード / 6-digit code<input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\"></label>\
             <label>または回復コード / or a recovery code<input name=\"recovery_code\" autocomplete=\"off\"></label>\
             <button>ログイン / Sign in</button></form>",
            error_line(error),
            esc(login)
        ),
    )
}

/// The enrolment page: the QR code, the secret, and the form for the first code.
pub fn enrol(login: &str, otpauth_uri: &str, secret: &str, qr_svg: &str, error: Option<&str>) -> String {
    use base64::Engine;
    let img = base64::engine::general_purpose::STANDARD.encode(qr_svg);
    page(
        "二要素認証の登録 / Set up two-factor authentication",
        &format!(
            "{}<p>認証アプリでQRコードを読み取り、表示されたコードを入力してください。</p>\
             <img alt=\"QR code\" width=\"240\" height=\"240\" src=\"data:image/svg+xml;base64,{}\">\
             <p>Secret: <code>{}</code></p><p><code>{}</code></p>\
             <form method=\"post\" action=\"/auth/mfa\"><input type=\"hidden\" name=\"login\" value=\"{}\">\
             <label>6桁のコード / 6-digit code<input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label>\
             <button>登録 / Confirm</button></form>",
            error_line(error),
            img,
            esc(secret),
            esc(otpauth_uri),
            esc(login)
        ),
    )
}

/// Shown once after enrolment: the recovery codes, then on to the application.
pub fn recovery_codes(codes: &[String], redirect: &str) -> String {
    let list: String = codes.iter().map(|c| format!("<li><code>{}</code></li>", esc(c))).collect();
    page(
        "回復コード / Recovery codes",
        &format!(
            "<p>各コードは1回だけ使えます。安全な場所に保管してください。Each code works once; keep them safe.</p>\
             <ol>{list}</ol><p><a href=\"{}\">続ける / Continue</a></p>",
            esc(redirect)
        ),
    )
}

/// An error that ends the flow (a bad authorization request is never redirected).
pub fn error(message: &str) -> String {
    page("エラー / Error", &error_line(Some(message)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_escaped() {
        let html = super::login("r\"><script>", "<b>", Some("x<y"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&quot;&gt;&lt;script&gt;"));
        assert!(html.contains("x&lt;y"));
    }
}
