use locksmith::locked;

#[locked(skip(password))]
fn login(user: &str, pass: &str) -> locksmith::Result<()> {
    let _ = (user, pass);
    Ok(())
}

#[locked(name = "login:{user}", skip(pass))]
fn login_named(user: &str, pass: &str) -> locksmith::Result<()> {
    let _ = (user, pass);
    Ok(())
}

fn main() {}
