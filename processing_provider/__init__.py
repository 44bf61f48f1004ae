"""The Processing provider `mapservercache` and its algorithm."""
