package main

import "time"

// TEMPORARY: stand-ins for the read side's preview functions, so that this branch builds
// and its tests run. The read side's branch has the real ones; delete this file at merge.

func newClientContext(platform, clientVersion, country, language, playerID, timeZone, utcOffset string, z *zones) (clientContext, error) {
	return clientContext{}, nil
}

func playerQueryFrom(statuses, labels []string) (playerQuery, error) {
	return playerQuery{labels: labels}, nil
}

type hiddenEvent struct {
	e      *entry
	reason string
}

func (s *snapshot) playerView(t time.Time, q playerQuery, c *clientContext) (shown []shown, hidden []hiddenEvent) {
	shown, _ = s.playerEvents(t, q)
	return shown, nil
}

func playerAnswer(t time.Time, events []shown) []byte {
	body, _ := playerListBody(t, events)
	return body
}
