//go:build !race

package main

// raceEnabled says the tests run under the race detector, which multiplies memory use:
// heap bounds are not checked then.
const raceEnabled = false
