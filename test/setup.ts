/** Preloaded by bunfig.toml for every test file. */
import { setDefaultTimeout } from "bun:test";

// Tests that load models or spawn the CLI share 2 cores with everything else: allow 60 s each.
setDefaultTimeout(60_000);
