"""glintstream's streaming side: settings, embedded broker, CLI, worker and jobs."""
