use locksmith::locked;

#[locked(name = "mailbox:{self.id}")]
fn sync(id: u64) -> locksmith::Result<()> {
    let _ = id;
    Ok(())
}

fn main() {}
