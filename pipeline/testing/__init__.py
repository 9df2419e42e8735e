"""What exists for tests, benchmarks and the offline demo, apart from the product code: a fake
web on loopback (`fakeweb`, with generated `content` and `faults`), a crawlable test site
(`testsite`), generated captions (`text_sample`), the generated world of image-text pairs
(`world`), the demo's world web (`world_web`) and a curate-tiny trained on the world
(`tiny_clip`). Product code never imports it; the demo, which runs the product on this world,
is the one exception (tests/unit/test_layers.py)."""
