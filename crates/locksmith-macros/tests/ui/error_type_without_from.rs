use locksmith::locked;

#[locked]
fn read() -> std::io::Result<String> {
    Ok(String::new())
}

fn main() {}
