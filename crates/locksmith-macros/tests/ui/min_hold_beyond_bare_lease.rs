use locksmith::locked;

#[locked(ttl = "30s", min_hold = "1h", renew = false)]
fn hourly() -> locksmith::Result<()> {
    Ok(())
}

// Without `ttl`, the default lease is 60 s.
#[locked(min_hold = "2m", renew = false)]
fn default_ttl() -> locksmith::Result<()> {
    Ok(())
}

// Fine: renewal keeps the lock for as long as min_hold needs.
#[locked(ttl = "30s", min_hold = "1h")]
fn renewed() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
