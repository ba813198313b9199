"""The built-in toy robot task for the demo and closed-loop evaluation (numpy only, deterministic).

- `task`: the bimanual cube hand-over scene, its variants (`get_task`, `list_tasks`) and dynamics
- `kinematics`: planar two-link arm forward / inverse kinematics
- `render`: top-down RGB cameras `cam_high`, `cam_left_wrist`, `cam_right_wrist`
- `expert`: the scripted expert (demos and corrections), able to take over from any state
- `rollout`: one episode with a policy, the expert, or both (`InterventionRule`: DAgger takeovers)
- `collect`: `collect_demos` / `collect` write raw ALOHA HDF5 episodes for `recap convert aloha-hdf5`
- `evaluate`: closed-loop success rate with a Wilson 95% interval, optional GIFs
- `remote`: a served policy as a `policy_fn` (`remote_policy`), a policy or run served for a while
  (`serve_policy`, `serve_run`)
- `gym_env`: closed-loop evaluation on a gymnasium env (`recap eval --env MODULE:ID`) through an
  adapter between its observations/actions and the openpi wire format
- `indicator`: how far a pi0.6 policy's actions move with its advantage indicator (open loop)
"""
