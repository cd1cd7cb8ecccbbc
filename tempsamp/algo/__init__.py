"""RL algorithm math: GRPO advantages, GT injection, PPO-clip / KL losses."""
