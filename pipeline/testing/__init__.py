"""What exists for tests, benchmarks and the offline demo, apart from the product code: a fake
web on loopback (`fakeweb`, with generated `content` and `faults`), a crawlable test site
(`testsite`), generated captions (`text_sample`) and the demo's world web (`world_web`).
Stages never import it."""
