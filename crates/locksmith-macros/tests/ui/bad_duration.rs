use locksmith::locked;

#[locked(ttl = "30 parsecs")]
fn unit() -> locksmith::Result<()> {
    Ok(())
}

#[locked(min_hold = 3600)]
fn bare_number() -> locksmith::Result<()> {
    Ok(())
}

#[locked(ttl = "10ms")]
fn below_min_ttl() -> locksmith::Result<()> {
    Ok(())
}

#[locked(ttl = std::time::Duration::from_secs(30) + 5)]
fn expression_of_the_wrong_type() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
