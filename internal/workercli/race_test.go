//go:build race

package workercli

// raceEnabled: the process tests build their binaries with -race too.
const raceEnabled = true
