//! What the gateway checks, without I/O: the one path normalisation (`path`), the route
//! matcher (`routes`), the escape levels and forms of a value (`canon`), the credential
//! guard and response scrubber (`scan`) and git receive-pack commands (`git`). Each is
//! property-tested here and fuzzed (`gateway/fuzz`); keeping them apart from the proxy means
//! the fuzz targets build this and nothing of the server.

pub mod canon;
pub mod git;
pub mod path;
pub mod routes;
pub mod scan;
