use locksmith::locked;

#[locked(name = "sync:{user}:{id}")]
fn sync(id: u64) -> locksmith::Result<()> {
    let _ = id;
    Ok(())
}

fn main() {}
