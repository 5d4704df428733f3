use locksmith::locked;

// cachelock's positional `{0}`: Rust templates name parameters.
#[locked(name = "job:{0}")]
fn positional(a: u8) -> locksmith::Result<()> {
    let _ = a;
    Ok(())
}

#[locked(name = "job:{a + 1}")]
fn arithmetic(a: u8) -> locksmith::Result<()> {
    let _ = a;
    Ok(())
}

#[locked(name = "job:{a")]
fn unclosed(a: u8) -> locksmith::Result<()> {
    let _ = a;
    Ok(())
}

#[locked(name = "job:{a|}")]
fn empty_alternative(a: u8) -> locksmith::Result<()> {
    let _ = a;
    Ok(())
}

fn main() {}
